//! The types of configuration keys: [`Key`] with its typed spec ([`Int`], [`Text`],
//! [`Choice`], [`List`], [`Section`]), and [`AnyKey`], what every key shows the key list,
//! the unknown-key check and the README. The keys themselves are in [`super::keys`].
//!
//! Threads: read-only data.

/// One configuration key (a leaf) or section (an object), with its typed spec `S`.
#[derive(Debug)]
pub struct Key<S: 'static> {
    /// Dotted path with the canonical spelling, e.g. `tcp.tls.cert_path`.
    pub path: &'static str,
    /// Older spellings accepted in the same place (the seed's Python and C++ configs).
    /// Giving two spellings of one key is an error that names both.
    pub aliases: &'static [&'static str],
    /// Type, default and range.
    pub spec: S,
    /// What it does, for the README and `check-config`.
    pub doc: &'static str,
}

/// An integer key. Every integer key has a default.
#[derive(Debug)]
pub struct Int {
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// The value when the key is absent (or null, unless `null_omits`).
    pub default: u64,
    /// `null` means "off" (e.g. omit a header) rather than "the default".
    pub null_omits: bool,
}

/// A non-empty string key.
#[derive(Debug)]
pub struct Text {
    /// What an absent key means.
    pub default: Fallback,
}

/// What an absent string key means.
#[derive(Debug)]
pub enum Fallback {
    /// This value.
    Value(&'static str),
    /// Nothing (the feature is off, or the loader derives a value); the text says which,
    /// for operators.
    Unset(&'static str),
    /// The key must be given (within its section, if that section is given); the text is
    /// shown as the default.
    Required(&'static str),
}

/// One of a fixed set of strings (compared without regard to ASCII case).
#[derive(Debug)]
pub struct Choice {
    /// The accepted values.
    pub options: &'static [&'static str],
    /// The value when the key is absent (or null, unless `null_omits`).
    pub default: &'static str,
    /// `null` means "off" rather than "the default".
    pub null_omits: bool,
}

/// A non-empty array of strings.
#[derive(Debug)]
pub struct List {
    /// The value when the key is absent.
    pub default: &'static [&'static str],
}

/// A JSON object holding other keys; `null` counts as absent.
#[derive(Debug)]
pub struct Section {
    /// What leaving it out means, for the README ("" when nothing needs saying).
    pub absent: &'static str,
}

/// A spec's face for the README and the loader's generic checks.
pub trait Spec: Sync + std::fmt::Debug {
    /// The default as shown to operators.
    fn shown_default(&self) -> String;
    /// Whether this is a section (a JSON object of keys).
    fn is_section(&self) -> bool {
        false
    }
}

impl Spec for Int {
    fn shown_default(&self) -> String {
        self.default.to_string()
    }
}

impl Spec for Text {
    fn shown_default(&self) -> String {
        match self.default {
            Fallback::Value(v) => format!("\"{v}\""),
            Fallback::Unset(t) | Fallback::Required(t) => t.to_owned(),
        }
    }
}

impl Spec for Choice {
    fn shown_default(&self) -> String {
        format!("\"{}\"", self.default)
    }
}

impl Spec for List {
    fn shown_default(&self) -> String {
        let items: Vec<String> = self.default.iter().map(|s| format!("\"{s}\"")).collect();
        format!("[{}]", items.join(", "))
    }
}

impl Spec for Section {
    fn shown_default(&self) -> String {
        self.absent.to_owned()
    }
    fn is_section(&self) -> bool {
        true
    }
}

/// Any key, whatever its spec: what the key list, the unknown-key check and the README
/// need.
pub trait AnyKey: Sync {
    /// The canonical dotted path.
    fn path(&self) -> &'static str;
    /// Other accepted spellings, as full dotted paths.
    fn aliases(&self) -> &'static [&'static str];
    /// The meaning.
    fn doc(&self) -> &'static str;
    /// The default as shown to operators.
    fn shown_default(&self) -> String;
    /// Whether this is a section.
    fn is_section(&self) -> bool;
}

impl<S: Spec> AnyKey for Key<S> {
    fn path(&self) -> &'static str {
        self.path
    }
    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn shown_default(&self) -> String {
        self.spec.shown_default()
    }
    fn is_section(&self) -> bool {
        self.spec.is_section()
    }
}

impl std::fmt::Debug for dyn AnyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}
