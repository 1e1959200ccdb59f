//! Typed reads from the parsed document: each reader takes a key constant from
//! [`super::keys`] and applies that key's default and range, so the loader never writes
//! a default or a range itself.
//!
//! Threads: `main`, once, while loading.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::keys::{Choice, Fallback, Int, Key, List, Section, Text};
use super::{ConfigError, invalid};

/// The parsed document, with the directory relative paths resolve against.
pub(super) struct Doc<'a> {
    root: &'a Map<String, Value>,
    base: &'a Path,
    /// Every key path looked up, for the test that each key in `KEYS` is read.
    read: RefCell<Vec<&'static str>>,
    /// Warnings collected while loading, for [`super::Config::warnings`].
    warnings: RefCell<Vec<String>>,
}

impl<'a> Doc<'a> {
    pub(super) fn new(root: &'a Map<String, Value>, base: &'a Path) -> Self {
        Self {
            root,
            base,
            read: RefCell::new(Vec::new()),
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// Records a warning about `key`.
    pub(super) fn warn<S>(&self, key: &Key<S>, text: impl std::fmt::Display) {
        self.warnings
            .borrow_mut()
            .push(format!("configuration: `{}` {text}", key.path));
    }

    /// The warnings collected so far.
    pub(super) fn take_warnings(&self) -> Vec<String> {
        self.warnings.take()
    }

    /// Whether the key is given (in any spelling) with a value other than null.
    pub(super) fn given<S>(&self, key: &Key<S>) -> bool {
        !matches!(self.get(key), None | Some(Value::Null))
    }

    /// The directory relative paths resolve against.
    pub(super) fn base(&self) -> &Path {
        self.base
    }

    /// The key paths read so far.
    #[cfg(test)]
    pub(super) fn read_paths(&self) -> Vec<&'static str> {
        self.read.borrow().clone()
    }

    /// The value of `key` in whichever spelling was given. The known-key check has
    /// already refused a document that gives two spellings.
    fn get<S>(&self, key: &Key<S>) -> Option<&'a Value> {
        self.read.borrow_mut().push(key.path);
        std::iter::once(key.path)
            .chain(key.aliases.iter().copied())
            .find_map(|p| self.raw(p))
    }

    fn raw(&self, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut cur = self.root.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    /// Whether the section is given (an object); `null` counts as absent.
    pub(super) fn section(&self, key: &Key<Section>) -> Result<bool, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Object(_)) => Ok(true),
            Some(_) => Err(invalid(key.path, "must be an object (a section of keys)")),
        }
    }

    /// The integer, or the key's default when absent or null.
    pub(super) fn int(&self, key: &Key<Int>) -> Result<u64, ConfigError> {
        Ok(self.nullable_int(key)?.unwrap_or(key.spec.default))
    }

    /// Like [`Doc::int`], but `None` when the key is null and null means "omit".
    pub(super) fn nullable_int(&self, key: &Key<Int>) -> Result<Option<u64>, ConfigError> {
        let Int {
            min,
            max,
            default,
            null_omits,
        } = key.spec;
        match self.get(key) {
            None => Ok(Some(default)),
            Some(Value::Null) => Ok((!null_omits).then_some(default)),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(
                    key.path,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
        }
    }

    /// The string; when absent, the key's default value, `None` if it has none, or an
    /// error if it is required.
    pub(super) fn text(&self, key: &Key<Text>) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => match key.spec.default {
                Fallback::Value(v) => Ok(Some(v.to_owned())),
                Fallback::Unset(_) => Ok(None),
                Fallback::Required(_) => Err(required(key.path)),
            },
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(invalid(key.path, "must not be empty")),
            Some(_) => Err(invalid(key.path, "must be a string")),
        }
    }

    /// A string that is always there: given, defaulted, or an error naming the key.
    pub(super) fn required(&self, key: &Key<Text>) -> Result<String, ConfigError> {
        self.text(key)?.ok_or_else(|| required(key.path))
    }

    /// A path, resolved against the configuration file's directory.
    pub(super) fn path(&self, key: &Key<Text>) -> Result<Option<PathBuf>, ConfigError> {
        Ok(self.text(key)?.map(|s| self.base.join(s)))
    }

    /// One of the key's options (as spelled in `keys.rs`); `None` when null means "omit".
    pub(super) fn choice(&self, key: &Key<Choice>) -> Result<Option<&'static str>, ConfigError> {
        let Choice {
            options,
            default,
            null_omits,
        } = key.spec;
        match self.get(key) {
            None => Ok(Some(default)),
            Some(Value::Null) => Ok((!null_omits).then_some(default)),
            Some(v) => v
                .as_str()
                .and_then(|s| options.iter().find(|o| o.eq_ignore_ascii_case(s)))
                .map(|o| Some(*o))
                .ok_or_else(|| {
                    let list: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                    let null = if null_omits { " or null" } else { "" };
                    invalid(
                        key.path,
                        format!("must be one of {}{null}, not {v}", list.join(", ")),
                    )
                }),
        }
    }

    /// A non-empty list of strings, or the key's default when absent or null.
    pub(super) fn list(&self, key: &Key<List>) -> Result<Vec<String>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => {
                Ok(key.spec.default.iter().map(|s| (*s).to_owned()).collect())
            }
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(key.path, "must list non-empty strings"))
                })
                .collect(),
            Some(_) => Err(invalid(key.path, "must be a non-empty array of strings")),
        }
    }
}

/// "is required", naming the enclosing optional section for a key inside one.
fn required(path: &str) -> ConfigError {
    match path.rsplit_once('.') {
        Some((parent, _)) if parent.contains('.') => {
            invalid(path, format!("is required when `{parent}` is set"))
        }
        _ => invalid(path, "is required"),
    }
}
