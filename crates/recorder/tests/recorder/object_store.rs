//! Object storage against a real S3-compatible server: moto, installed into a venv under
//! `target/` on first use and started on a port of its own choosing (it prints it).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Recorder as _, RecordingFrame, RecordingKind, SessionId};
use gatehouse_recorder::recording::{check_seal, parse_recording, read_recording_bytes};
use gatehouse_recorder::witness::Witness as _;
use gatehouse_recorder::{
    AuditRecorder, LogStatus, ObjectStoreWitness, RecorderConfig, VerifyOptions,
};
use gatehouse_testkit::moto::{Moto, header};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::common::*;

const LOG: &str = "gw-s3";

fn bucket(moto: &Moto) -> Arc<dyn ObjectStore> {
    moto.create_bucket("gatehouse");
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_bucket_name("gatehouse")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    )
}

/// A bucket created with object lock and a default retention (COMPLIANCE, one day), as the
/// operator sets it up for the witness; and a client for it with the gateway's credentials.
fn locked_bucket(moto: &Moto, name: &str) -> Arc<dyn ObjectStore> {
    moto.create_locked_bucket(name, "COMPLIANCE", 1);
    let (_, _, body) = moto.request("GET", &format!("/{name}?object-lock"), &[], b"");
    assert!(
        body.contains("<Mode>COMPLIANCE</Mode>") && body.contains("<Days>1</Days>"),
        "the bucket has a default retention: {body}"
    );
    Arc::new(
        ObjectStoreWitness::prepare_s3(AmazonS3Builder::new(), true)
            .with_endpoint(moto.endpoint())
            .with_bucket_name(name)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_and_recordings_go_to_s3_and_verify_from_there() {
    let moto = Moto::start();
    let store = bucket(&moto);
    let dir = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(LOG);
    config.log.segment_max_bytes = 8 * 1024;
    config.object_store = Some(store.clone());
    let rec = AuditRecorder::open(dir.path(), config, signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    for i in 0..200 {
        rec.record(sql_event(&s, i, "select * from orders"))
            .await
            .unwrap();
    }
    let mut sink = rec
        .open_recording(&s, RecordingKind::Terminal { cols: 80, rows: 24 })
        .await
        .unwrap();
    let chunk = vec![b'x'; 100 * 1024];
    for _ in 0..80 {
        // 8 MB: a multipart upload.
        sink.write(RecordingFrame::Output {
            data: chunk.clone(),
        })
        .await
        .unwrap();
    }
    let seal = within(120, sink.seal()).await.unwrap();
    assert!(seal.location.starts_with("recordings/"));
    rec.log().rotate().await.unwrap();
    let local =
        gatehouse_recorder::read::load_local_log(&dir.path().join("audit").join(LOG), LOG).unwrap();
    let closed = local.segments.len() - 1;
    assert!(closed >= 3);

    // Shipping is asynchronous: wait until every closed segment is in the bucket.
    let remote = within(60, async {
        loop {
            let remote = gatehouse_recorder::objstore::load_log(
                store.as_ref(),
                &format!("audit/{LOG}"),
                LOG,
            )
            .await
            .unwrap();
            if remote.segments.len() >= closed {
                return remote;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for (r, l) in remote.segments.iter().zip(&local.segments) {
        assert_eq!(r.name, l.name);
        assert_eq!(r.bytes, l.bytes, "shipped bytes are the stored bytes");
    }
    let v = gatehouse_recorder::verify::verify_log(&remote, &options());
    assert!(v.ok(), "{:?}", v.problem);

    let bytes = read_recording_bytes(rec.recording_store(), &seal.location)
        .await
        .unwrap();
    assert!(check_seal(&bytes, &seal));
    let replay = parse_recording(&bytes).unwrap();
    assert_eq!(replay.frames.len(), 80);
    rec.log().close().await.unwrap();
}

/// The object-storage witness: every checkpoint and the seal become objects of a bucket with a
/// default retention; a witnessed version can be neither deleted nor replaced in place; a log cut
/// behind a witnessed checkpoint fails verification against what the bucket holds; an object
/// replaced by a newer version holding another checkpoint makes the read fail, never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_witnessed_in_a_locked_bucket_catch_a_cut_log() {
    let moto = Moto::start();
    let store = locked_bucket(&moto, "witness");
    let dir = tempfile::tempdir().unwrap();
    let mut config = RecorderConfig::new(LOG);
    config.log.checkpoint_every_records = 20;
    config.log.checkpoint_interval = Duration::from_secs(3600);
    config.witnesses.push(Arc::new(ObjectStoreWitness::new(
        store.clone(),
        "gatehouse/witness",
    )));
    let rec = AuditRecorder::open(dir.path(), config, signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    for i in 0..90 {
        rec.record(sql_event(&s, i, "select * from orders"))
            .await
            .unwrap();
    }
    within(60, rec.log().close()).await.unwrap();

    let held = within(
        60,
        ObjectStoreWitness::read_all(store.as_ref(), "gatehouse/witness"),
    )
    .await
    .unwrap();
    // The opening checkpoint, one every 20 records, and the seal, each its own object.
    assert!(held.len() >= 5, "{held:?}");
    assert_eq!(held.iter().filter(|c| c.sealed).count(), 1);
    let log_dir = dir.path().join("audit").join(LOG);
    let data = gatehouse_recorder::read::load_local_log(&log_dir, LOG).unwrap();
    let with_witness = VerifyOptions {
        witnesses: held.clone(),
        ..options()
    };
    let v = gatehouse_recorder::verify::verify_log(&data, &with_witness);
    assert_eq!(v.status(), LogStatus::Sealed, "{:?}", v.problem);
    assert_eq!(v.witnesses_matched as usize, held.len());

    // Each object carries the bucket's default retention.
    let seal = held.iter().find(|c| c.sealed).unwrap();
    let key = format!(
        "/witness/gatehouse/witness/{LOG}/{}",
        gatehouse_recorder::witness::witness_file_name(seal.sequence)
    );
    let (status, head, _) = moto.request("GET", &key, &[], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        header(&head, "x-amz-object-lock-mode").as_deref(),
        Some("COMPLIANCE"),
        "{head}"
    );
    assert!(header(&head, "x-amz-object-lock-retain-until-date").is_some());
    let version = header(&head, "x-amz-version-id").unwrap();

    // The witnessed version cannot be deleted, not even by the credentials that wrote it.
    let (status, _, body) = moto.request("DELETE", &format!("{key}?versionId={version}"), &[], b"");
    assert_eq!(status, 403, "deleting a locked version: {body}");
    // The writer never replaces an object: a different checkpoint for the same sequence fails.
    let witness = ObjectStoreWitness::new(store.clone(), "gatehouse/witness");
    let mut other = seal.clone();
    other.time = "2026-01-01T00:00:00Z".into();
    assert!(witness.push(&other).await.is_err());
    assert!(
        witness.push(seal).await.is_ok(),
        "the same one again is fine"
    );

    // A log cut behind the seal (the seal, or the seal and the last 30 records) fails.
    for cut in [1usize, 31] {
        let mut short = data.clone();
        let mut left = cut;
        while left > 0 {
            let seg = short.segments.last_mut().unwrap();
            let lines: Vec<&[u8]> = seg.bytes.split_inclusive(|b| *b == b'\n').collect();
            if lines.len() <= left {
                left -= lines.len();
                short.segments.pop();
            } else {
                let keep: usize = lines[..lines.len() - left].iter().map(|l| l.len()).sum();
                seg.bytes.truncate(keep);
                left = 0;
            }
        }
        let v = gatehouse_recorder::verify::verify_log(&short, &options());
        assert_ne!(v.status(), LogStatus::Sealed, "cut {cut}: never sealed");
        let v = gatehouse_recorder::verify::verify_log(&short, &with_witness);
        assert_eq!(v.status(), LogStatus::Failed, "cut {cut}");
        assert_eq!(
            v.problem.as_ref().unwrap().kind,
            gatehouse_recorder::ProblemKind::TruncatedTail,
            "cut {cut}: {:?}",
            v.problem
        );
    }

    // Someone allowed `s3:DeleteObject` deletes the seal's object without a version id: S3 places
    // a delete marker (object lock does not refuse it) and a plain listing no longer shows the
    // seal, so a log cut back behind it would pass against `read_all`; reading every version
    // still finds the locked seal.
    let builder = || {
        ObjectStoreWitness::prepare_s3(AmazonS3Builder::new(), true)
            .with_endpoint(moto.endpoint())
            .with_bucket_name("witness")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
    };
    let (status, head, _) = moto.request("DELETE", &key, &[], b"");
    assert_eq!(status, 204, "{head}");
    assert_eq!(
        header(&head, "x-amz-delete-marker").as_deref(),
        Some("true")
    );
    let listed = ObjectStoreWitness::read_all(store.as_ref(), "gatehouse/witness")
        .await
        .unwrap();
    assert!(
        !listed.iter().any(|c| c.sealed),
        "the marker hides the seal"
    );
    let all = ObjectStoreWitness::read_all_versions(builder(), true, "gatehouse/witness")
        .await
        .unwrap();
    assert_eq!(all.len(), held.len(), "{all:?}");
    let mut short = data.clone();
    let seg = short.segments.last_mut().unwrap();
    let keep = seg.bytes[..seg.bytes.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    seg.bytes.truncate(keep);
    let hidden = VerifyOptions {
        witnesses: listed,
        ..options()
    };
    assert_ne!(
        gatehouse_recorder::verify::verify_log(&short, &hidden).status(),
        LogStatus::Failed,
        "what a plain listing would let through"
    );
    let every = VerifyOptions {
        witnesses: all,
        ..options()
    };
    assert_eq!(
        gatehouse_recorder::verify::verify_log(&short, &every).status(),
        LogStatus::Failed
    );

    // Someone with the gateway's credentials writes a newer version of the seal's object (an
    // earlier checkpoint, validly signed, to hide the seal): the locked version stays, and the
    // witness read fails instead of trusting the newer one.
    let earlier = held.iter().find(|c| !c.sealed).unwrap();
    store
        .put(
            &object_store::path::Path::from(key.trim_start_matches("/witness/")),
            serde_json::to_vec(earlier).unwrap().into(),
        )
        .await
        .unwrap();
    let err = ObjectStoreWitness::read_all(store.as_ref(), "gatehouse/witness")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
    let err = ObjectStoreWitness::read_all_versions(builder(), true, "gatehouse/witness")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
    let (status, _, body) = moto.request("GET", &format!("{key}?versionId={version}"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<gatehouse_recorder::Checkpoint>(&body).unwrap(),
        *seal,
        "the witnessed version is still there"
    );
}
