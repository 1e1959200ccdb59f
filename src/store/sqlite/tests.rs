use super::*;
use crate::store::AccountSpec;
use crate::types::{BareJid, ChannelHosts};

fn dev(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn uri(s: &str) -> ChannelUri {
    ChannelUri::parse(s, &ChannelHosts::new(vec!["notify.windows.com".into()])).unwrap()
}

#[test]
fn bare_jid_accounts_store_hash_and_domain_only() {
    let s = Sqlite::open_in_memory().unwrap();
    let d = dev("5486bd86");
    s.set_channel(
        &d,
        &uri("https://a.notify.windows.com/?t"),
        ProtocolVersion::V1,
        1,
    )
    .unwrap();
    let jid = BareJid::parse("someClient@XMPP.uwpx.org").unwrap();
    let key = AccountKey::derive(&d, &jid);
    let spec = AccountSpec {
        key: key.clone(),
        domain: Some(jid.domain()),
    };
    s.set_accounts(
        &d,
        ProtocolVersion::V1,
        Some(AccountForm::BareJid),
        &[spec],
        2,
    )
    .unwrap()
    .unwrap();
    let conn = s.lock();
    let (k, domain): (String, String) = conn
        .query_row("SELECT account_key, domain FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (k.as_str(), domain.as_str()),
        (key.as_str(), "xmpp.uwpx.org")
    );
}
