// Invariant checks shared by the fuzz targets (fuzz/fuzz_targets/*.rs) and
// by the seed-replay integration test (tests/fuzz_seeds.rs). This file holds
// items only and is pulled in with `include!`, so it must not depend on
// anything but `usdcop_dr`, `serde_json` and `std`.
//
// Each check feeds one arbitrary input to the decoders (plain and
// zstd-compressed variants), and when a decoder accepts it, asserts a
// round-trip invariant. A check panics on a broken invariant (or when a
// decoder panics) and returns whether any decoder accepted the input.

/// Pack header: `decode_header`, `encode_header`, `header_location`,
/// `blob_offsets`.
///
/// The encoding is canonical, so `encode_header(decode_header(x)?) == x`.
pub fn check_pack_header(data: &[u8]) -> bool {
    use usdcop_dr::format::pack;

    // header_location never panics and, when it accepts, returns a header
    // that lies inside the pack, before the 4-byte trailer.
    if data.len() >= 4 {
        let trailer: [u8; 4] = data[data.len() - 4..].try_into().unwrap();
        let mut lens = vec![0u64, 3, 4, data.len() as u64, u64::MAX, u64::MAX - 3];
        if data.len() >= 12 {
            lens.push(u64::from_le_bytes(data[..8].try_into().unwrap()));
        }
        for pack_len in lens {
            if let Ok((off, hlen)) = pack::header_location(pack_len, trailer) {
                assert_eq!(
                    hlen,
                    u32::from_le_bytes(trailer),
                    "header_location changed the length"
                );
                assert!(
                    hlen as usize <= pack::MAX_HEADER_LEN,
                    "header length {hlen} above the maximum"
                );
                assert_eq!(
                    off.checked_add(hlen as u64).and_then(|e| e.checked_add(4)),
                    Some(pack_len),
                    "header_location({pack_len}, {hlen}) returned offset {off}"
                );
            }
        }
    }

    let entries = match pack::decode_header(data) {
        Ok(entries) => entries,
        Err(_) => return false,
    };

    let reencoded = pack::encode_header(&entries);
    assert!(
        reencoded.as_slice() == data,
        "pack header: encode(decode(x)) != x\n  x   = {}\n  enc = {}",
        hex_of(data),
        hex_of(&reencoded)
    );
    assert_eq!(
        data.len(),
        9 + entries.len() * pack::ENTRY_LEN,
        "pack header length"
    );
    assert_eq!(
        pack::decode_header(&reencoded).expect("re-encoded pack header decodes"),
        entries
    );

    let mut total = 0u64;
    let mut expect = Vec::with_capacity(entries.len());
    for e in &entries {
        assert!(
            e.stored_len <= pack::MAX_BLOB_LEN
                && e.stored_len as usize >= usdcop_dr::crypto::OVERHEAD,
            "decoder accepted out-of-range stored_len {}",
            e.stored_len
        );
        expect.push(total);
        total += e.stored_len as u64;
    }
    let offsets =
        pack::blob_offsets(&entries, total).expect("blob_offsets accepts the exact blob total");
    assert_eq!(
        offsets, expect,
        "blob_offsets are not the prefix sums of stored_len"
    );
    assert!(
        pack::blob_offsets(&entries, total + 1).is_err(),
        "blob_offsets accepted a gap"
    );
    if total > 0 {
        assert!(
            pack::blob_offsets(&entries, total - 1).is_err(),
            "blob_offsets accepted an overlap"
        );
    }

    // A pack made of these blobs followed by a header of this size is located
    // exactly.
    let hlen = data.len() as u32;
    let pack_len = total + data.len() as u64 + 4;
    match pack::header_location(pack_len, hlen.to_le_bytes()) {
        Ok(loc) => assert_eq!(loc, (total, hlen), "header_location of a well-formed pack"),
        Err(e) => assert!(
            data.len() > pack::MAX_HEADER_LEN,
            "header_location refused a valid pack: {e}"
        ),
    }
    true
}

/// Index: `decode`/`encode` (canonical) and `decode_compressed`.
pub fn check_index(data: &[u8]) -> bool {
    use usdcop_dr::format::index;

    fn invariants(idx: &index::IndexFile) {
        for p in &idx.packs {
            for b in &p.blobs {
                assert!(
                    b.stored_len <= usdcop_dr::format::pack::MAX_BLOB_LEN,
                    "index accepted stored_len {}",
                    b.stored_len
                );
                assert!(
                    b.offset.checked_add(b.stored_len).is_some(),
                    "index accepted an overflowing blob range"
                );
            }
        }
        let enc = index::encode(idx);
        assert_eq!(
            &index::decode(&enc).expect("encoded index decodes"),
            idx,
            "index: decode(encode(i)) != i"
        );
        let comp = index::encode_compressed(idx);
        assert_eq!(
            &index::decode_compressed(&comp).expect("compressed index decodes"),
            idx,
            "index: decode_compressed(encode_compressed(i)) != i"
        );
    }

    let mut accepted = false;
    if let Ok(idx) = index::decode(data) {
        let reencoded = index::encode(&idx);
        assert!(
            reencoded.as_slice() == data,
            "index: encode(decode(x)) != x\n  x   = {}\n  enc = {}",
            hex_of(data),
            hex_of(&reencoded)
        );
        invariants(&idx);
        accepted = true;
    }
    if let Ok(idx) = index::decode_compressed(data) {
        invariants(&idx);
        accepted = true;
    }
    accepted
}

/// Snapshot: JSON `decode` and `decode_compressed`. Re-encoding a decoded
/// snapshot with `serde_json::to_vec` must decode to an exactly equal value
/// (floats included: this needs serde_json's `float_roundtrip` feature), and
/// the re-encoding must be a fixed point.
pub fn check_snapshot(data: &[u8]) -> bool {
    use usdcop_dr::format::snapshot;

    fn invariants(s: &snapshot::Snapshot) {
        s.validate()
            .expect("decoder returned a snapshot that does not validate");
        let json = serde_json::to_vec(s).expect("decoded snapshot serializes");
        let again = match snapshot::decode(&json) {
            Ok(again) => again,
            Err(e) => panic!(
                "snapshot: re-encoded JSON does not decode: {e}\n  json = {}",
                String::from_utf8_lossy(&json)
            ),
        };
        assert!(
            &again == s,
            "snapshot: decode(to_vec(s)) != s\n  s     = {s:?}\n  again = {again:?}\n  json  = {}",
            String::from_utf8_lossy(&json)
        );
        // Equal values can still serialize differently (0.0 == -0.0).
        let json2 = serde_json::to_vec(&again).expect("snapshot serializes");
        assert!(
            json2 == json,
            "snapshot: JSON re-encoding is not a fixed point\n  1st = {}\n  2nd = {}",
            String::from_utf8_lossy(&json),
            String::from_utf8_lossy(&json2)
        );
        // A summary within the reader's cap re-encodes within it too,
        // except when re-encoding grew it past the cap: then it is refused.
        if let Ok(comp) = snapshot::encode_compressed(s) {
            assert!(
                snapshot::decode_compressed(&comp).expect("compressed snapshot decodes") == *s,
                "snapshot: decode_compressed(encode_compressed(s)) != s"
            );
        }
    }

    let mut accepted = false;
    if let Ok(s) = snapshot::decode(data) {
        invariants(&s);
        accepted = true;
    }
    if let Ok(s) = snapshot::decode_compressed(data) {
        invariants(&s);
        accepted = true;
    }
    accepted
}

/// List tree node (format/tree.rs): `decode_node` for entry trees and
/// chunk trees, with and without the parent's count and level. An accepted
/// leaf holds exactly the count asked for; an inner node's children sum to
/// it; a node accepted under its own count and level decodes the same
/// without them; and a leaf's items rebuilt with `TreeBuilder` come back
/// the same when iterated.
pub fn check_tree_node(data: &[u8]) -> bool {
    use usdcop_dr::format::snapshot::Entry;
    use usdcop_dr::format::tree::{self, Node, TreeBuilder, TreeItem};
    use usdcop_dr::format::Id;

    fn one<T: TreeItem + PartialEq + std::fmt::Debug>(data: &[u8]) -> bool {
        let id = Id::hash(data);
        let Ok(node) = tree::decode_node::<T>(data, &id, None, None) else {
            return false;
        };
        let (count, level) = match &node {
            Node::Leaf(items) => (items.len() as u64, 0),
            Node::Inner { level, children } => {
                (children.iter().map(|c| c.count).sum::<u64>(), *level)
            }
        };
        let again = tree::decode_node::<T>(data, &id, Some(count), Some(level))
            .expect("a node decodes under its own count and level");
        assert!(again == node, "decode_node depends on the checks asked for");
        assert!(
            tree::decode_node::<T>(data, &id, Some(count.wrapping_add(1)), None).is_err(),
            "a wrong count was accepted"
        );
        if let Node::Leaf(items) = node {
            let mut b = TreeBuilder::<T>::new();
            let mut store = std::collections::HashMap::new();
            for i in &items {
                match b.push(i) {
                    Ok(nodes) => store.extend(nodes.into_iter().map(|n| (n.id, n.plain))),
                    Err(_) => return true, // an item too large to store
                }
            }
            let (root, nodes) = b.finish();
            store.extend(nodes.into_iter().map(|n| (n.id, n.plain)));
            let back: Vec<T> = tree::collect_in_memory(&root, &|i| store.get(i).cloned())
                .expect("a built tree iterates");
            assert!(back == items, "leaf items changed through TreeBuilder");
        }
        true
    }

    let a = one::<Entry>(data);
    let b = one::<Id>(data);
    a || b
}

/// Lower-case hex, for failure messages (no dependency on the `hex` crate).
pub fn hex_of(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// WAL: `wal_records::scan` reads the input as (the start of) a segment:
/// never panics, and what it reports is consistent and the same when the
/// segment's start is given; `wal::decode` opens the input sealed as a WAL
/// object's inner bytes without panicking; and the input archived as a
/// WAL file (`encode`) decodes back to itself.
pub fn check_wal(data: &[u8]) -> bool {
    use usdcop_dr::crypto::{Domain, Key};
    use usdcop_dr::format::wal::{self, WalName};
    use usdcop_dr::format::wal_records;
    use usdcop_dr::format::Id;

    let mut accepted = false;
    if let Ok(s) = wal_records::scan(data, None) {
        accepted = true;
        assert!(
            s.commits + s.aborts + s.restore_points <= s.records,
            "more timed records than records: {s:?}"
        );
        let limit = s.start_lsn.0 + data.len() as u64;
        if let Some(end) = s.end_lsn {
            assert!(
                end.0 > s.start_lsn.0 && end.0 <= limit,
                "end {end} outside the input: {s:?}"
            );
        } else {
            assert_eq!(s.records, 0, "records without an end: {s:?}");
        }
        assert!(s.stop_lsn.0 >= s.start_lsn.0, "stop before the start: {s:?}");
        assert!(s.first_tli <= s.last_tli, "timelines went back: {s:?}");
        if let (Some(a), Some(b)) = (&s.first_xact, &s.last_xact) {
            assert!(a.lsn <= b.lsn, "first and last transaction out of order");
        }
        let again = wal_records::scan(data, Some(s.start_lsn)).expect("its own start is accepted");
        assert!(again == s, "the scan depends on being told the start");
    }

    let key = Key::from_bytes(&[7u8; 32]).expect("a 32-byte key");
    let name = WalName::parse("000000010000000000000002").expect("a segment name");
    let object = name.object_name(&Id::hash(data));
    if let Ok(d) = wal::decode(&key, &name, &object, &key.seal(Domain::Wal, data)) {
        assert!(Id::hash(&d.plain) == Id::hash(data), "decode returned other content than its name's hash");
        accepted = true;
    }
    let sealed = wal::encode(&key, 42, &name, data, 1);
    let d = wal::decode(&key, &name, &object, &sealed).expect("an encoded WAL file decodes");
    assert!(d.plain == data && d.system_id == 42, "WAL object round trip");
    accepted
}
