//! Batch encrypt/decrypt, rewrap and encrypted records through gRPC.

use kmf::rpc::pb;
use tonic::Code;

use crate::support::{Pki, TestNode};

fn enc(spec: &str, pt: &[u8], aad: &[u8]) -> pb::EncryptRequest {
    pb::EncryptRequest { spec: spec.into(), plaintext: pt.to_vec(), associated_data: aad.to_vec() }
}

fn code(e: &Option<pb::ItemError>) -> Option<Code> {
    e.as_ref().map(|e| Code::from_i32(e.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fail_per_item_and_rewrap_moves_to_the_current_key() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "a", true).await;
    ops.spec("m", "b", true).await;

    let items = vec![enc("a", b"one", b"x"), enc("nope", b"two", b""), enc("b", b"three", b""), enc("a", b"", b"")];
    let out = ops.crypto.encrypt_batch(pb::EncryptBatchRequest { items }).await.expect("batch").into_inner().results;
    let codes: Vec<Option<Code>> = out.iter().map(|r| code(&r.error)).collect();
    assert_eq!(codes, vec![None, Some(Code::NotFound), None, None]);

    let mut tampered = out[2].ciphertext.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let items = vec![
        pb::DecryptRequest { ciphertext: out[0].ciphertext.clone(), associated_data: b"x".to_vec() },
        pb::DecryptRequest { ciphertext: out[0].ciphertext.clone(), associated_data: b"y".to_vec() },
        pb::DecryptRequest { ciphertext: tampered, associated_data: vec![] },
        pb::DecryptRequest { ciphertext: b"garbage".to_vec(), associated_data: vec![] },
        pb::DecryptRequest { ciphertext: out[3].ciphertext.clone(), associated_data: vec![] },
    ];
    let back = ops.crypto.decrypt_batch(pb::DecryptBatchRequest { items }).await.expect("batch").into_inner().results;
    let codes: Vec<Option<Code>> = back.iter().map(|r| code(&r.error)).collect();
    assert_eq!(
        codes,
        vec![None, Some(Code::InvalidArgument), Some(Code::InvalidArgument), Some(Code::InvalidArgument), None]
    );
    assert_eq!((back[0].plaintext.as_slice(), back[4].plaintext.as_slice()), (&b"one"[..], &b""[..]));

    for (n, what) in [(0usize, "empty"), (10_001, "too many")] {
        let items = vec![enc("a", b"x", b""); n];
        let err = ops.crypto.encrypt_batch(pb::EncryptBatchRequest { items }).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
    }
    let full = vec![enc("a", b"x", b""); 10_000];
    let out_full =
        ops.crypto.encrypt_batch(pb::EncryptBatchRequest { items: full }).await.expect("10,000 items").into_inner();
    assert!(out_full.results.iter().all(|r| r.error.is_none() && !r.ciphertext.is_empty()));

    // Rewrap after a rotation: new key, same plaintext, same associated data.
    let old_key = out[0].key_id.clone();
    let r = ops.keys.rotate_key(pb::RotateKeyRequest { spec: "a".into() }).await.expect("rotate").into_inner();
    let new_key = r.active.expect("active").key_id;
    let w = ops
        .crypto
        .rewrap(pb::RewrapRequest { ciphertext: out[0].ciphertext.clone(), associated_data: b"x".to_vec() })
        .await
        .expect("rewrap")
        .into_inner();
    assert_eq!((w.previous_key_id.as_str(), w.key_id.as_str()), (old_key.as_str(), new_key.as_str()));
    assert_eq!(ops.decrypt(&w.ciphertext, b"x").await.expect("decrypt rewrapped"), b"one");
    assert_eq!(ops.decrypt(&w.ciphertext, b"y").await.expect_err("aad kept").code(), Code::InvalidArgument);
    let err = ops
        .crypto
        .rewrap(pb::RewrapRequest { ciphertext: out[0].ciphertext.clone(), associated_data: b"z".to_vec() })
        .await;
    assert_eq!(err.expect_err("wrong aad").code(), Code::InvalidArgument);
    let items = vec![
        pb::RewrapRequest { ciphertext: out[2].ciphertext.clone(), associated_data: vec![] },
        pb::RewrapRequest { ciphertext: b"junk".to_vec(), associated_data: vec![] },
    ];
    let rb =
        ops.crypto.rewrap_batch(pb::RewrapBatchRequest { items }).await.expect("rewrap batch").into_inner().results;
    assert_eq!((code(&rb[0].error), code(&rb[1].error)), (None, Some(Code::InvalidArgument)));
    assert_eq!(rb[0].key_id, rb[0].previous_key_id, "spec b did not rotate");
}

fn addr(table: &str, field: &str, id: &str) -> Option<pb::RecordAddress> {
    Some(pb::RecordAddress { table: table.into(), field: field.into(), record_id: id.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_get_list_delete() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("hr", "salary", true).await;
    for i in 0..5 {
        let req = pb::PutRecordRequest {
            address: addr("employee", "salary", &format!("e{i}")),
            spec: "salary".into(),
            plaintext: format!("{i}000 EUR").into_bytes(),
        };
        ops.crypto.put_record(req).await.expect("put");
    }
    let req = pb::PutRecordRequest {
        address: addr("employee", "bonus", "e0"),
        spec: "salary".into(),
        plaintext: b"7".to_vec(),
    };
    ops.crypto.put_record(req).await.expect("put other field");

    let got = ops
        .crypto
        .get_record(pb::GetRecordRequest { address: addr("employee", "salary", "e3") })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.plaintext, b"3000 EUR");
    assert!(got.record.expect("info").key_id.ends_with(":salary:v1"));

    // Paged listing of one field.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let req = pb::ListRecordsRequest {
            table: "employee".into(),
            field: "salary".into(),
            page_token: token.clone(),
            page_size: 2,
        };
        let page = ops.crypto.list_records(req).await.expect("list").into_inner();
        seen.extend(page.records.iter().map(|r| r.address.clone().expect("addr").record_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, vec!["e0", "e1", "e2", "e3", "e4"]);
    let bad = pb::ListRecordsRequest { page_token: "zz".into(), ..Default::default() };
    assert_eq!(ops.crypto.list_records(bad).await.expect_err("bad token").code(), Code::InvalidArgument);

    let cases = [
        (addr("employee", "salary", "nobody"), Code::NotFound),
        (addr("bad table", "salary", "e1"), Code::InvalidArgument),
        (addr("employee", "salary", ""), Code::InvalidArgument),
        (None, Code::InvalidArgument),
    ];
    for (address, want) in cases {
        let err = ops.crypto.get_record(pb::GetRecordRequest { address: address.clone() }).await.expect_err("bad get");
        assert_eq!(err.code(), want, "{address:?}");
    }
    let req = pb::PutRecordRequest {
        address: addr("employee", "salary", "e9"),
        spec: "nope".into(),
        plaintext: b"x".to_vec(),
    };
    assert_eq!(ops.crypto.put_record(req).await.expect_err("unknown spec").code(), Code::NotFound);

    ops.crypto
        .delete_record(pb::DeleteRecordRequest { address: addr("employee", "salary", "e3") })
        .await
        .expect("delete");
    let err = ops
        .crypto
        .get_record(pb::GetRecordRequest { address: addr("employee", "salary", "e3") })
        .await
        .expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);
    let err = ops.crypto.delete_record(pb::DeleteRecordRequest { address: addr("employee", "salary", "e3") }).await;
    assert_eq!(err.expect_err("twice").code(), Code::NotFound);
}

fn new_record(id: &str, spec: &str, plaintext: &str) -> pb::PutRecordRequest {
    pb::PutRecordRequest { address: addr("employee", "salary", id), spec: spec.into(), plaintext: plaintext.into() }
}

async fn digest(ops: &mut crate::support::Ops, table: &str) -> (u64, Vec<u8>) {
    let req = pb::DigestRecordsRequest { table: table.into(), field: String::new() };
    let d = ops.crypto.digest_records(req).await.expect("digest").into_inner();
    (d.records, d.sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_records_is_all_or_nothing_and_digests_compare_plaintexts_not_keys() {
    let pki = Pki::new();
    let (a, b) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut on_a, mut on_b) = (a.admin(&pki).await, b.admin(&pki).await);
    on_a.spec("hr", "salary", true).await;
    on_b.spec("hr", "salary", true).await;

    // One bad item (unknown spec, then a bad address): nothing is stored, and the error names it.
    let mut batch: Vec<_> = (0..5).map(|i| new_record(&format!("e{i}"), "salary", &format!("{i}000"))).collect();
    batch[3].spec = "nope".into();
    let err = on_a.crypto.put_records(pb::PutRecordsRequest { records: batch.clone() }).await.expect_err("bad item");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().starts_with("records[3]: "), "{}", err.message());
    batch[3] = pb::PutRecordRequest { address: addr("bad table", "salary", "e3"), ..batch[3].clone() };
    let err = on_a.crypto.put_records(pb::PutRecordsRequest { records: batch.clone() }).await.expect_err("bad address");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("records[3]: "), "{}", err.message());
    assert_eq!(digest(&mut on_a, "").await.0, 0, "a failed call stores nothing");
    for records in [vec![], vec![new_record("x", "salary", "1"); 1001]] {
        let n = records.len();
        let err = on_a.crypto.put_records(pb::PutRecordsRequest { records }).await.expect_err("size");
        assert_eq!(err.code(), Code::InvalidArgument, "{n} records");
    }

    // The same plaintexts on two instances, under different keys: equal digests.
    batch[3] = new_record("e3", "salary", "3000");
    let stored = on_a.crypto.put_records(pb::PutRecordsRequest { records: batch.clone() }).await.expect("put");
    assert_eq!(stored.into_inner().records.len(), 5);
    for r in batch.iter().rev() {
        on_b.crypto.put_record(r.clone()).await.expect("put one");
    }
    let (count_a, sum_a) = digest(&mut on_a, "employee").await;
    let (count_b, sum_b) = digest(&mut on_b, "employee").await;
    assert_eq!((count_a, count_b), (5, 5));
    assert_eq!(sum_a.len(), 32);
    assert_eq!(sum_a, sum_b, "same addresses and plaintexts under different keys");
    assert_eq!(digest(&mut on_a, "other").await.0, 0, "the table filter applies");

    // One changed plaintext changes it; moving a value to another address too.
    on_b.crypto.put_record(new_record("e4", "salary", "4001")).await.expect("change");
    assert_ne!(digest(&mut on_b, "").await.1, sum_a);
    on_b.crypto.put_record(new_record("e4", "salary", "4000")).await.expect("back");
    assert_eq!(digest(&mut on_b, "").await.1, sum_a);
    on_b.crypto
        .delete_record(pb::DeleteRecordRequest { address: addr("employee", "salary", "e4") })
        .await
        .expect("del");
    on_b.crypto.put_record(new_record("e5", "salary", "4000")).await.expect("moved");
    assert_ne!(digest(&mut on_b, "").await.1, sum_a);
}
