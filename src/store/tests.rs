use super::*;
use crate::types::{
    AccountForm, AccountKey, ChannelHosts, ChannelUri, DeviceId, Node, ProtocolVersion,
};

fn dev(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn uri(s: &str) -> ChannelUri {
    ChannelUri::parse(s, &ChannelHosts::new(vec!["notify.windows.com".into()])).unwrap()
}

fn spec(k: &str) -> AccountSpec {
    AccountSpec {
        key: AccountKey::parse(k).unwrap(),
        domain: None,
    }
}

#[test]
fn accounts_keep_nodes_and_channel_updates_keep_accounts() {
    let s = Store::open_in_memory().unwrap();
    let d = dev("abcd");
    let v2 = ProtocolVersion::V2;
    assert!(
        s.set_accounts(&d, v2, None, &[spec("a")], 1)
            .unwrap()
            .is_none()
    );
    s.set_channel(&d, &uri("https://a.notify.windows.com/?token=1"), v2, 1)
        .unwrap();
    let first = s
        .set_accounts(
            &d,
            v2,
            Some(AccountForm::AccountId),
            &[spec("a"), spec("b")],
            2,
        )
        .unwrap()
        .unwrap();
    s.set_channel(&d, &uri("https://b.notify.windows.com/?token=2"), v2, 3)
        .unwrap();
    let second = s
        .set_accounts(
            &d,
            v2,
            Some(AccountForm::AccountId),
            &[spec("b"), spec("c")],
            4,
        )
        .unwrap()
        .unwrap();
    assert_eq!(second[0].node, first[1].node);
    assert_eq!(second[0].secret.expose(), first[1].secret.expose());
    assert_ne!(second[1].node, first[0].node);
    let keys: Vec<_> = s.accounts(&d).unwrap().into_iter().map(|a| a.key).collect();
    assert_eq!(
        keys,
        vec![
            AccountKey::parse("b").unwrap(),
            AccountKey::parse("c").unwrap()
        ]
    );
    let rec = s.device(&d).unwrap().unwrap();
    assert_eq!(
        rec.channel_uri.as_str(),
        "https://b.notify.windows.com/?token=2"
    );
    assert_eq!(rec.account_form, Some(AccountForm::AccountId));
    // An empty list deletes everything but keeps the device and its form.
    assert!(
        s.set_accounts(&d, v2, None, &[], 5)
            .unwrap()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.counts().unwrap(),
        Counts {
            devices: 1,
            accounts: 0
        }
    );
    assert_eq!(
        s.device(&d).unwrap().unwrap().account_form,
        Some(AccountForm::AccountId)
    );
}

#[test]
fn every_way_an_account_goes_leaves_its_node_to_delete() {
    let s = Store::open_in_memory().unwrap();
    let d = dev("ab");
    let u = uri("https://a.notify.windows.com/?t=1");
    s.set_channel(&d, &u, ProtocolVersion::V2, 1).unwrap();
    let recs = s
        .set_accounts(
            &d,
            ProtocolVersion::V2,
            None,
            &[spec("a"), spec("b"), spec("c")],
            1,
        )
        .unwrap()
        .unwrap();
    assert!(recs.iter().all(|r| r.created));
    assert!(s.removed_nodes(10).unwrap().is_empty());
    // Removed by the client.
    let again = s
        .set_accounts(&d, ProtocolVersion::V2, None, &[spec("b"), spec("c")], 2)
        .unwrap()
        .unwrap();
    assert!(again.iter().all(|r| !r.created));
    assert_eq!(s.removed_nodes(10).unwrap(), vec![recs[0].node.clone()]);
    // The device goes (ChannelGone): its accounts go by cascade.
    assert!(s.delete_device_if_channel(&d, &u).unwrap());
    let mut gone = s.removed_nodes(10).unwrap();
    gone.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut want: Vec<Node> = recs.iter().map(|r| r.node.clone()).collect();
    want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(gone, want);
    s.forget_removed_nodes(&gone).unwrap();
    assert!(s.removed_nodes(10).unwrap().is_empty());
    // Outside client mode nothing is recorded.
    s.track_removed_nodes(false).unwrap();
    s.set_channel(&d, &u, ProtocolVersion::V2, 3).unwrap();
    s.set_accounts(&d, ProtocolVersion::V2, None, &[spec("x")], 3)
        .unwrap();
    s.set_accounts(&d, ProtocolVersion::V2, None, &[], 4)
        .unwrap();
    assert!(s.removed_nodes(10).unwrap().is_empty());
    s.track_removed_nodes(true).unwrap();
    s.set_accounts(&d, ProtocolVersion::V2, None, &[spec("y")], 5)
        .unwrap();
    s.set_accounts(&d, ProtocolVersion::V2, None, &[], 6)
        .unwrap();
    assert_eq!(s.removed_nodes(10).unwrap().len(), 1);
}

fn store_with(ids: &[&str]) -> Store {
    let store = Store::open_in_memory().unwrap();
    let hosts = ChannelHosts::new(vec!["notify.windows.com".into()]);
    let uri = ChannelUri::parse("https://a.notify.windows.com/?t=1", &hosts).unwrap();
    for (i, id) in ids.iter().enumerate() {
        let device = DeviceId::parse(id).unwrap();
        store
            .set_channel(&device, &uri, ProtocolVersion::V2, 1000 + i as i64)
            .unwrap();
    }
    store
}

#[test]
fn a_prefix_finds_its_devices_whatever_the_case() {
    let store = store_with(&["abcdef01", "abcdef02", "ABCDEF03", "abcd99"]);
    let m = store
        .devices_with_prefix(&DeviceId::parse("abcdef").unwrap(), 2)
        .unwrap();
    assert_eq!(m.total, 3);
    assert_eq!(m.first.len(), 2);
    let m = store
        .devices_with_prefix(&DeviceId::parse("AbCdEf02").unwrap(), 10)
        .unwrap();
    assert_eq!((m.total, m.first[0].as_str()), (1, "abcdef02"));
    let m = store
        .devices_with_prefix(&DeviceId::parse("abcdef0").unwrap(), 10)
        .unwrap();
    assert_eq!(m.total, 3);
    let none = store
        .devices_with_prefix(&DeviceId::parse("ffff").unwrap(), 10)
        .unwrap();
    assert_eq!((none.total, none.first.len()), (0, 0));
}

#[test]
fn summaries_count_accounts_newest_first() {
    let store = store_with(&["aa01", "aa02"]);
    let spec = |k: &str| AccountSpec {
        key: AccountKey::parse(k).unwrap(),
        domain: None,
    };
    store
        .set_accounts(
            &DeviceId::parse("aa01").unwrap(),
            ProtocolVersion::V1,
            Some(AccountForm::AccountId),
            &[spec("k1"), spec("k2")],
            5000,
        )
        .unwrap();
    let list = store.device_summaries().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].device_id.as_str(), "aa01");
    assert_eq!(list[0].accounts, 2);
    assert_eq!(list[0].version, ProtocolVersion::V1);
    assert_eq!(list[0].account_form, Some(AccountForm::AccountId));
    assert_eq!(list[0].last_seen_at, 5000);
    assert_eq!((list[1].device_id.as_str(), list[1].accounts), ("aa02", 0));
}
