//! A pool that jobs started is not moved afterwards.

#[tokio::test]
async fn starting_after_the_first_job_is_an_error() {
    wharf_background::run("wharf-test-first", || ())
        .await
        .unwrap();
    assert!(wharf_background::start(None).unwrap().is_none());
    let tmp = tempfile::tempdir().unwrap();
    let e = wharf_background::start(Some(tmp.path())).unwrap_err();
    assert!(e.to_string().contains("started already"), "{e}");
}
