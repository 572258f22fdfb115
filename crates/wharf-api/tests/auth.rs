//! Access control over HTTP: the principal × role × action matrix, the token
//! protocol (GET, OAuth2 POST, refresh), token tampering, throttling,
//! htpasswd, the admin API against its OpenAPI document, and the audit log.

mod harness;

use harness::{ADMIN_PASSWORD, AuthSetup, OCI_MANIFEST, TestRegistry, image_manifest, sha256};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Someone talking to the registry the way docker and containerd do: a token
/// from `/auth/token` for exactly the scope each request needs.
#[derive(Clone)]
struct Client {
    base: String,
    http: reqwest::Client,
    creds: Option<(String, String)>,
}

impl Client {
    fn new(reg: &TestRegistry, creds: Option<(&str, &str)>) -> Client {
        Client {
            base: reg.url(""),
            http: harness::http_client(),
            creds: creds.map(|(u, p)| (u.to_owned(), p.to_owned())),
        }
    }

    async fn token(&self, scopes: &[String]) -> String {
        let mut q: Vec<(&str, &str)> = vec![("service", "wharf")];
        for s in scopes {
            q.push(("scope", s));
        }
        let mut rb = self.http.get(format!("{}/auth/token", self.base)).query(&q);
        if let Some((u, p)) = &self.creds {
            rb = rb.basic_auth(u, Some(p));
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200, "token for {scopes:?}");
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn req(
        &self,
        m: Method,
        path: &str,
        scopes: &[String],
        body: Option<(Vec<u8>, &str)>,
    ) -> reqwest::Response {
        let t = self.token(scopes).await;
        let mut rb = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(t);
        if let Some((b, ct)) = body {
            rb = rb.header("content-type", ct).body(b);
        }
        rb.send().await.unwrap()
    }

    async fn pull(&self, repo: &str, tag: &str) -> StatusCode {
        self.req(
            Method::GET,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[format!("repository:{repo}:pull")],
            None,
        )
        .await
        .status()
    }

    /// Pushes a one-layer image; the status of the first refused step, or of
    /// the manifest PUT.
    async fn push(&self, repo: &str, tag: &str) -> StatusCode {
        let scope = [format!("repository:{repo}:pull,push")];
        let config = format!(r#"{{"architecture":"amd64","os":"linux","tag":"{tag}"}}"#);
        let layer = format!("layer {repo} {tag}").repeat(50);
        let mut descs = Vec::new();
        for blob in [config.as_bytes(), layer.as_bytes()] {
            let d = sha256(blob);
            let r = self
                .req(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                    &scope,
                    Some((blob.to_vec(), "application/octet-stream")),
                )
                .await;
            if r.status() != 201 {
                return r.status();
            }
            descs.push((d, blob.len()));
        }
        let m = image_manifest(&descs[0].0, descs[0].1, &[(&descs[1].0, descs[1].1)], None);
        self.req(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            &scope,
            Some((m, OCI_MANIFEST)),
        )
        .await
        .status()
    }

    async fn delete(&self, repo: &str, tag: &str) -> StatusCode {
        self.req(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{tag}"),
            &[format!("repository:{repo}:delete")],
            None,
        )
        .await
        .status()
    }

    async fn catalog(&self) -> Vec<String> {
        let r = self
            .req(
                Method::GET,
                "/v2/_catalog",
                &["registry:catalog:*".into()],
                None,
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    }

    async fn mount(&self, repo: &str, from: &str, digest: &str) -> StatusCode {
        self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
            &[
                format!("repository:{repo}:pull,push"),
                format!("repository:{from}:pull"),
            ],
            None,
        )
        .await
        .status()
    }
}

/// An admin API call with Basic credentials.
async fn api(
    reg: &TestRegistry,
    creds: (&str, &str),
    m: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut rb = reg
        .client
        .request(m.clone(), reg.url(&format!("/api/v1{path}")))
        .basic_auth(creds.0, Some(creds.1));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    let v: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    openapi_check(&m, path, status, &v);
    (status, v)
}

const ADMIN: (&str, &str) = ("admin", ADMIN_PASSWORD);

/// The audit records matching `query` once there are at least `n` of them:
/// the writer commits within about a second.
async fn audit_rows(reg: &TestRegistry, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..60 {
        let (s, v) = api(reg, ADMIN, Method::GET, &format!("/audit?{query}"), None).await;
        assert_eq!(s, 200);
        match v {
            Value::Array(rows) if rows.len() >= n => return rows,
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("fewer than {n} audit records match {query}");
}

/// Turns OpenAPI 3.0's `nullable` into JSON Schema's type lists.
fn to_json_schema(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if o.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = o.get("type").cloned()
            {
                o.insert("type".into(), json!([t, "null"]));
            }
            for x in o.values_mut() {
                to_json_schema(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// Asserts that a response is documented in the OpenAPI document and that its
/// body matches the documented schema.
fn openapi_check(m: &Method, path: &str, status: StatusCode, body: &Value) {
    let mut spec: Value = serde_json::from_str(wharf_api::admin_openapi()).unwrap();
    to_json_schema(&mut spec);
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    let (template, op) = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(t, _)| {
            let ts: Vec<&str> = t.split('/').collect();
            // `{repository}` is a whole repository name, slashes and all.
            let whole = ts.last() == Some(&"{repository}");
            (ts.len() == segs.len() || (whole && segs.len() >= ts.len()))
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
        })
        .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
    let method = m.as_str().to_ascii_lowercase();
    let resp = &op[&method]["responses"][status.as_str()];
    assert!(
        resp.is_object(),
        "{method} {template} answered {status}, which the OpenAPI document does not list"
    );
    match resp["content"]["application/json"]["schema"].as_object() {
        None => assert!(
            body.is_null(),
            "{method} {template} {status}: expected no body"
        ),
        Some(schema) => {
            let mut root = Value::Object(schema.clone());
            root["components"] = spec["components"].clone();
            let v = jsonschema::validator_for(&root).unwrap();
            if let Err(e) = v.validate(body) {
                panic!("{method} {template} {status}: body {body} breaks the schema: {e}");
            }
        }
    }
}

async fn builtin() -> TestRegistry {
    TestRegistry::builder()
        .auth(AuthSetup::Builtin {
            lockout_attempts: 1000,
        })
        .spawn()
        .await
}

async fn add_user(reg: &TestRegistry, name: &str) {
    let (s, _) = api(
        reg,
        ADMIN,
        Method::POST,
        "/users",
        Some(json!({"name": name, "password": format!("{name}-password")})),
    )
    .await;
    assert_eq!(s, 201);
}

fn pw(name: &str) -> String {
    format!("{name}-password")
}

#[tokio::test(flavor = "multi_thread")]
async fn matrix_of_principals_roles_and_actions() {
    let reg = builtin().await;
    for (p, public) in [("pub", true), ("priv", false), ("other", false)] {
        let (s, _) = api(
            &reg,
            ADMIN,
            Method::POST,
            "/projects",
            Some(json!({"name": p, "public": public})),
        )
        .await;
        assert_eq!(s, 201);
    }
    for (user, role) in [
        ("padmin", "projectadmin"),
        ("maint", "maintainer"),
        ("dev", "developer"),
        ("guest", "guest"),
        ("lguest", "limitedguest"),
    ] {
        add_user(&reg, user).await;
        let (s, v) = api(
            &reg,
            ADMIN,
            Method::PUT,
            &format!("/projects/priv/members/{user}"),
            Some(json!({"role": role})),
        )
        .await;
        assert_eq!((s, v["role"].as_str()), (StatusCode::OK, Some(role)));
    }
    add_user(&reg, "outsider").await;
    let (s, robot) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/robots",
        Some(json!({"name": "ci", "permissions": [{"project": "priv", "actions": ["push"]}]})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(robot["name"], "robot$ci");
    assert_eq!(
        robot["permissions"][0]["actions"],
        json!(["pull", "push"]),
        "push implies pull"
    );
    let robot_secret = robot["secret"].as_str().unwrap().to_owned();
    // A personal token of dev's, cut down to pulling.
    let (s, pat) = api(
        &reg,
        ("dev", &pw("dev")),
        Method::POST,
        "/users/dev/tokens",
        Some(json!({"name": "ro", "permissions": [{"project": "*", "actions": ["pull"]}], "expires_in_days": 30})),
    )
    .await;
    assert_eq!(s, 201);
    let pat_secret = pat["secret"].as_str().unwrap().to_owned();
    assert!(pat_secret.starts_with("wharf_pat_"));

    let admin = Client::new(&reg, Some(ADMIN));
    for repo in ["pub/app", "priv/app", "other/app", "busybox"] {
        assert_eq!(admin.push(repo, "v1").await, 201, "{repo}");
    }

    let anon = Client::new(&reg, None);
    let users: Vec<(String, Client)> = ["padmin", "maint", "dev", "guest", "lguest", "outsider"]
        .iter()
        .map(|u| (u.to_string(), Client::new(&reg, Some((u, &pw(u))))))
        .collect();
    let robot = Client::new(&reg, Some(("robot$ci", &robot_secret)));
    let token = Client::new(&reg, Some(("dev", &pat_secret)));
    let mut all: Vec<(String, Client)> =
        vec![("anonymous".into(), anon), ("admin".into(), admin.clone())];
    all.extend(users);
    all.push(("robot".into(), robot));
    all.push(("pat".into(), token));

    // Expected: pull pub, pull priv, push pub, push priv, delete pub,
    // delete priv, mount other→priv (other is private and only admins read it),
    // mount pub→priv (anyone who may push to priv may read the public project).
    let expect = |who: &str| -> [bool; 8] {
        match who {
            "admin" => [true, true, true, true, true, true, true, true],
            "padmin" | "maint" => [true, true, false, true, false, true, false, true],
            "dev" | "robot" => [true, true, false, true, false, false, false, true],
            "guest" | "lguest" | "pat" => [true, true, false, false, false, false, false, false],
            "anonymous" | "outsider" => [true, false, false, false, false, false, false, false],
            _ => unreachable!(),
        }
    };
    let layer_of = |repo: &str| sha256(format!("layer {repo} v1").repeat(50).as_bytes());
    for (who, c) in &all {
        let want = expect(who);
        let tag = format!("by-{}", who.replace('$', ""));
        let got_pull_pub = c.pull("pub/app", "v1").await == 200;
        let got_pull_priv = c.pull("priv/app", "v1").await == 200;
        let got_push_pub = c.push("pub/app", &tag).await == 201;
        let got_push_priv = c.push("priv/app", &tag).await == 201;
        // Delete tags the admin pushed for the purpose.
        let victim = format!("victim-{who}");
        assert_eq!(admin.push("pub/app", &victim).await, 201);
        assert_eq!(admin.push("priv/app", &victim).await, 201);
        let got_delete_pub = c.delete("pub/app", &victim).await == 202;
        let got_delete_priv = c.delete("priv/app", &victim).await == 202;
        // A mount either happens (201), or quietly becomes an upload session
        // (202) that tells nothing about the blob; without push it is refused.
        let mut mounts = [false; 2];
        for (i, from) in ["other/app", "pub/app"].into_iter().enumerate() {
            let s = c.mount("priv/mounted", from, &layer_of(from)).await;
            if want[3] {
                assert!(
                    s == 201 || s == 202,
                    "{who}: mount from {from} answered {s}"
                );
            } else {
                assert_eq!(s, 401, "{who}: mount from {from} without push");
            }
            mounts[i] = s == 201;
        }
        let got = [
            got_pull_pub,
            got_pull_priv,
            got_push_pub,
            got_push_priv,
            got_delete_pub,
            got_delete_priv,
            mounts[0],
            mounts[1],
        ];
        assert_eq!(
            got, want,
            "{who}: [pull pub, pull priv, push pub, push priv, delete pub, delete priv, mount other→priv, mount pub→priv]"
        );
    }

    // Catalogs show only what each may see; limited guests do not list.
    let expect_catalog = |who: &str| -> Vec<&str> {
        match who {
            "admin" => vec![
                "busybox",
                "other/app",
                "priv/app",
                "priv/mounted",
                "pub/app",
            ],
            "padmin" | "maint" | "dev" | "guest" | "robot" | "pat" => {
                vec!["priv/app", "priv/mounted", "pub/app"]
            }
            _ => vec!["pub/app"],
        }
    };
    for (who, c) in &all {
        let mut want: Vec<String> = expect_catalog(who).into_iter().map(String::from).collect();
        // priv/mounted exists only if someone mounted into it.
        let cat = admin.catalog().await;
        want.retain(|r| cat.contains(r));
        assert_eq!(c.catalog().await, want, "{who} catalog");
    }
    let lguest = &all.iter().find(|(w, _)| w == "lguest").unwrap().1;
    let r = lguest
        .req(
            Method::GET,
            "/v2/priv/app/tags/list",
            &["repository:priv/app:pull".into()],
            None,
        )
        .await;
    assert_eq!(r.status(), 403, "limited guests do not list tags");
    let guest = &all.iter().find(|(w, _)| w == "guest").unwrap().1;
    let r = guest
        .req(
            Method::GET,
            "/v2/priv/app/tags/list",
            &["repository:priv/app:pull".into()],
            None,
        )
        .await;
    assert_eq!(r.status(), 200);

    // Basic credentials straight on /v2/ work too, with the same rules.
    let basic = |u: &str, p: &str, path: &str| {
        reg.client
            .get(reg.url(path))
            .basic_auth(u.to_owned(), Some(p.to_owned()))
            .send()
    };
    assert_eq!(
        basic("dev", &pw("dev"), "/v2/priv/app/manifests/v1")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        basic("outsider", &pw("outsider"), "/v2/priv/app/manifests/v1")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        basic("dev", "wrong-password", "/v2/priv/app/manifests/v1")
            .await
            .unwrap()
            .status(),
        401
    );

    // Revoking the robot and the token takes effect at once.
    let (s, _) = api(&reg, ADMIN, Method::DELETE, "/robots/robot$ci", None).await;
    assert_eq!(s, 204);
    let r = reg
        .client
        .get(reg.url("/auth/token?service=wharf"))
        .basic_auth("robot$ci", Some(&robot_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = api(
        &reg,
        ("dev", &pw("dev")),
        Method::DELETE,
        "/users/dev/tokens/ro",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let r = reg
        .client
        .get(reg.url("/auth/token?service=wharf"))
        .basic_auth("dev", Some(&pat_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_requests_get_a_bearer_challenge_with_the_scope() {
    let reg = builtin().await;
    let r = reg.send(Method::GET, "/v2/").await;
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        c,
        format!(
            "Bearer realm=\"http://{}/auth/token\",service=\"wharf\"",
            reg.addr
        )
    );
    let r = reg.send(Method::GET, "/v2/team/app/manifests/latest").await;
    let c = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(c.ends_with(",scope=\"repository:team/app:pull\""), "{c}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    // A token that lacks the scope: 401 asking for the right one.
    let t = Client::new(&reg, None).token(&[]).await;
    let r = reg
        .client
        .put(reg.url("/v2/team/app/manifests/latest"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        c.contains("scope=\"repository:team/app:pull,push\"")
            && c.contains("error=\"insufficient_scope\""),
        "{c}"
    );
    // An anonymous token is enough for /v2/ itself.
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_expired_and_foreign_tokens_are_refused() {
    use wharf_auth::token::{Audience, Claims, Signer};
    let reg = builtin().await;
    let admin = Client::new(&reg, Some(ADMIN));
    assert_eq!(admin.push("team/app", "v1").await, 201);
    let good = admin.token(&["repository:team/app:pull".into()]).await;
    let get = |t: String| {
        reg.client
            .get(reg.url("/v2/team/app/manifests/v1"))
            .bearer_auth(t)
            .send()
    };
    assert_eq!(get(good.clone()).await.unwrap().status(), 200);

    // Flip one character of the signature, then of the payload.
    let mut sig_flip = good.clone().into_bytes();
    let last = sig_flip.len() - 2;
    sig_flip[last] = if sig_flip[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        get(String::from_utf8(sig_flip).unwrap())
            .await
            .unwrap()
            .status(),
        401
    );
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["access"][0]["name"] = "other/app".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(get(forged).await.unwrap().status(), 401);

    // Tokens signed with the registry's own key but wrong in another way.
    let signer = Signer::load_or_create(&reg.data.join("wharf/token-signing.pem")).unwrap();
    let now = wharf_auth::now_ms() / 1000;
    let base = Claims {
        iss: "wharf".into(),
        sub: "admin".into(),
        aud: Audience::One("wharf".into()),
        exp: now + 300,
        nbf: now,
        iat: now,
        jti: "x".into(),
        access: vec![wharf_auth::AccessEntry {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        }],
        wharf_use: None,
        wharf_via: None,
        wharf_login_ms: None,
    };
    assert_eq!(
        get(signer.sign(&base).unwrap()).await.unwrap().status(),
        200,
        "control"
    );
    let cases = [
        (
            "expired",
            Claims {
                exp: now - 600,
                iat: now - 900,
                nbf: now - 900,
                ..base.clone()
            },
        ),
        (
            "not yet valid",
            Claims {
                nbf: now + 600,
                ..base.clone()
            },
        ),
        (
            "wrong audience",
            Claims {
                aud: Audience::One("other-registry".into()),
                ..base.clone()
            },
        ),
        (
            "wrong issuer",
            Claims {
                iss: "someone-else".into(),
                ..base.clone()
            },
        ),
        (
            "refresh token as access",
            Claims {
                wharf_use: Some("refresh".into()),
                ..base.clone()
            },
        ),
    ];
    for (what, c) in cases {
        let r = get(signer.sign(&c).unwrap()).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let ch = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(ch.contains("error=\"invalid_token\""), "{what}: {ch}");
    }
    // A key the registry never saw.
    let dir = tempfile::tempdir().unwrap();
    let stranger = Signer::load_or_create(&dir.path().join("k.pem")).unwrap();
    assert_eq!(
        get(stranger.sign(&base).unwrap()).await.unwrap().status(),
        401
    );
    assert_eq!(get("not-a-token".into()).await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_password_and_refresh_grants() {
    let reg = builtin().await;
    add_user(&reg, "carol").await;
    let post = |form: Vec<(&'static str, String)>| {
        reg.client.post(reg.url("/auth/token")).form(&form).send()
    };
    // containerd's POST with a password.
    let r = post(vec![
        ("grant_type", "password".into()),
        ("username", "carol".into()),
        ("password", pw("carol")),
        ("service", "wharf".into()),
        ("client_id", "containerd-client".into()),
        ("scope", "repository:library/x:pull".into()),
        ("access_type", "offline".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["access_token"].is_string() && v["expires_in"] == 300);
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();
    let r = post(vec![
        ("grant_type", "password".into()),
        ("username", "carol".into()),
        ("password", "nope".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 401);

    // dockerd's refresh grant, then a password change voids the refresh token.
    let grant = |t: String| {
        post(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", t),
            ("service", "wharf".into()),
            ("client_id", "docker".into()),
        ])
    };
    assert_eq!(grant(refresh.clone()).await.unwrap().status(), 200);
    assert_eq!(grant("garbage".into()).await.unwrap().status(), 401);
    // An access token is not a refresh token.
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(grant(access).await.unwrap().status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (s, _) = api(
        &reg,
        ("carol", &pw("carol")),
        Method::PUT,
        "/users/carol/password",
        Some(json!({"password": "a-new-password"})),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(grant(refresh).await.unwrap().status(), 401);

    // GET with offline_token (dockerd's login) returns a refresh token.
    let r = reg
        .client
        .get(reg.url("/auth/token?account=carol&client_id=docker&offline_token=true&service=wharf"))
        .basic_auth("carol", Some("a-new-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["refresh_token"].is_string());
    // Wrong service, bad scope, unknown grant.
    let r = reg
        .client
        .get(reg.url("/auth/token?service=elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reg
        .client
        .get(reg.url("/auth/token?scope=repository:UPPER:pull"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        post(vec![("grant_type", "magic".into())])
            .await
            .unwrap()
            .status(),
        400
    );
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address
/// reaches the test server).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_logins_are_throttled_per_account_and_address() {
    let reg = TestRegistry::builder()
        .auth(AuthSetup::Builtin {
            lockout_attempts: 5,
        })
        .spawn()
        .await;
    let (attacker, admin_elsewhere, shared_nat, sprayer) = (
        client_from("127.0.0.1"),
        client_from("127.0.0.2"),
        client_from("127.0.0.1"),
        client_from("127.0.0.4"),
    );
    let login = |c: &reqwest::Client, user: &str, p: &str| {
        c.get(reg.url("/auth/token?service=wharf"))
            .basic_auth(user, Some(p))
            .send()
    };
    // Five wrong passwords for admin from 127.0.0.1 are free; the fifth
    // blocks admin from there (for a minute here; a second by default).
    for _ in 0..5 {
        assert_eq!(
            login(&attacker, "admin", "wrong").await.unwrap().status(),
            401
        );
    }
    let r = login(&attacker, "admin", "wrong").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    // The right password from the same address waits too (else the block
    // would be no block)...
    assert_eq!(
        login(&shared_nat, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
            .status(),
        429
    );
    let r = shared_nat
        .get(reg.url("/v2/"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // ...but admin from another address is not blocked,
    assert_eq!(
        login(&admin_elsewhere, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
            .status(),
        200
    );
    let r = admin_elsewhere
        .post(reg.url("/api/v1/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "dev", "password": "dev-secret-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // nor another account from the same address.
    assert_eq!(
        login(&shared_nat, "dev", "dev-secret-123")
            .await
            .unwrap()
            .status(),
        200
    );
    // A password verified recently is remembered (until the cache's minute
    // is up, or any change to users empties it): an attacker failing on
    // that account from the same address does not lock out its holder.
    for _ in 0..5 {
        assert_eq!(
            login(&attacker, "dev", "wrong").await.unwrap().status(),
            401
        );
    }
    assert_eq!(
        login(&attacker, "dev", "guess").await.unwrap().status(),
        429
    );
    assert_eq!(
        login(&shared_nat, "dev", "dev-secret-123")
            .await
            .unwrap()
            .status(),
        200
    );

    // Names that name nobody count per address, with their own allowance
    // (10 here): then unknown names are refused from there, real accounts not.
    for i in 0..10 {
        let s = login(&sprayer, &format!("nobody{i}"), "x")
            .await
            .unwrap()
            .status();
        assert_eq!(s, 401, "attempt {i}");
    }
    assert_eq!(
        login(&sprayer, "nobody-more", "x").await.unwrap().status(),
        429
    );
    assert_eq!(
        login(&sprayer, "dev", "dev-secret-123")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(login(&sprayer, "dev", "wrong").await.unwrap().status(), 401);

    // Admins see the throttles, newest first...
    let r = admin_elsewhere
        .get(reg.url("/api/v1/throttles"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    openapi_check(&Method::GET, "/throttles", StatusCode::OK, &list);
    let entries: Vec<(Value, String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["account"].clone(),
                t["address"].as_str().unwrap().to_owned(),
                t["failures"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (json!("dev"), "127.0.0.4".to_owned(), 1),
            (Value::Null, "127.0.0.4".to_owned(), 10),
            (json!("dev"), "127.0.0.1".to_owned(), 5),
            (json!("admin"), "127.0.0.1".to_owned(), 5),
        ]
    );
    assert!(
        list[0]["blocked_until"].is_null(),
        "dev failed once: not blocked"
    );
    // ...others may not,
    let r = shared_nat
        .get(reg.url("/api/v1/throttles"))
        .basic_auth("dev", Some("dev-secret-123"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // and clearing one lets admin in from 127.0.0.1 at once.
    let r = admin_elsewhere
        .delete(reg.url("/api/v1/throttles?account=admin&address=127.0.0.1"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    openapi_check(&Method::DELETE, "/throttles", StatusCode::OK, &v);
    assert_eq!(v["cleared"], 1);
    assert_eq!(
        login(&shared_nat, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
            .status(),
        200
    );
    let r = admin_elsewhere
        .delete(reg.url("/api/v1/throttles?address=not-an-address"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A success forgets the pair's failures.
    let r = admin_elsewhere
        .post(reg.url("/api/v1/users"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"name": "ops", "password": "ops-secret-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(login(&sprayer, "ops", "typo").await.unwrap().status(), 401);
    assert_eq!(
        login(&sprayer, "ops", "ops-secret-123")
            .await
            .unwrap()
            .status(),
        200
    );
    let list: Value = admin_elsewhere
        .get(reg.url("/api/v1/throttles"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["account"] == "ops"),
        "{list}"
    );

    // Failures were audited (the writer flushes within a second; identical
    // records of one flush are one row that counts them); throttled
    // attempts never reach the check.
    let store = reg.auth.as_ref().unwrap().store().clone();
    let want = 5 + 10 + 1 + 1 + 5;
    let mut failed = 0;
    for _ in 0..60 {
        failed = store
            .audit(&wharf_auth::AuditFilter {
                action: Some("login".into()),
                outcome: Some("failed".into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|(_, e)| match &e.detail {
                Some(d) => d.split(' ').next().unwrap().parse::<usize>().unwrap(),
                None => 1,
            })
            .sum();
        if failed >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(failed, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(
        &file,
        format!("alice:{}\n", bcrypt::hash("alice-pw", 5).unwrap()),
    )
    .unwrap();
    let reg = TestRegistry::builder()
        .auth(AuthSetup::Htpasswd(file.clone()))
        .spawn()
        .await;
    let r = reg.send(Method::GET, "/v2/").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"test-realm\""
    );
    let get = |u: &str, p: &str| {
        reg.client
            .get(reg.url("/v2/"))
            .basic_auth(u.to_owned(), Some(p.to_owned()))
            .send()
    };
    assert_eq!(get("alice", "alice-pw").await.unwrap().status(), 200);
    assert_eq!(get("alice", "wrong").await.unwrap().status(), 401);
    assert_eq!(get("bob", "alice-pw").await.unwrap().status(), 401);
    // A bearer token means nothing here.
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .bearer_auth("x.y.z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Anonymous pushes are refused; alice may push anywhere.
    let r = reg.send(Method::POST, "/v2/any/repo/blobs/uploads/").await;
    assert_eq!(r.status(), 401);
    let r = reg
        .client
        .post(reg.url("/v2/any/repo/blobs/uploads/"))
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The file is re-read when it changes: alice's new password works, the old one not.
    let tmp = dir.path().join("new");
    std::fs::write(
        &tmp,
        format!("alice:{}\n", bcrypt::hash("new-pw", 5).unwrap()),
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(get("alice", "alice-pw").await.unwrap().status(), 401);
    assert_eq!(get("alice", "new-pw").await.unwrap().status(), 200);
    // No token service in htpasswd mode.
    assert_eq!(reg.send(Method::GET, "/auth/token").await.status(), 404);
    // htpasswd users read the audit log (they may do everything) but there
    // are no users or projects to manage.
    let mut logins = Value::Null;
    for _ in 0..60 {
        let (s, v) = api(
            &reg,
            ("alice", "new-pw"),
            Method::GET,
            "/audit?action=login&outcome=ok",
            None,
        )
        .await;
        assert_eq!(s, 200);
        if !v.as_array().unwrap().is_empty() {
            logins = v;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(logins[0]["actor"], "alice");
    let (s, _) = api(&reg, ("alice", "new-pw"), Method::GET, "/users", None).await;
    assert_eq!(s, 403);
    let (s, _) = api(&reg, ("alice", "wrong"), Method::GET, "/audit", None).await;
    assert_eq!(s, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_rules_and_audit() {
    let reg = builtin().await;
    let (s, _) = api(&reg, ("admin", "wrong"), Method::GET, "/users", None).await;
    assert_eq!(s, 401);
    add_user(&reg, "erin").await;
    let erin = ("erin", "erin-password");
    let (s, _) = api(&reg, erin, Method::GET, "/users", None).await;
    assert_eq!(s, 403);
    let (s, v) = api(&reg, erin, Method::GET, "/users/erin", None).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("erin")));
    let (s, _) = api(&reg, erin, Method::GET, "/users/admin", None).await;
    assert_eq!(s, 403);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/users",
        Some(json!({"name": "erin", "password": "12345678"})),
    )
    .await;
    assert_eq!(s, 409);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/users",
        Some(json!({"name": "x", "password": "short"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/users",
        Some(json!({"name": "robot$x", "password": "12345678"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/users",
        Some(json!({"name": "y", "password": "12345678", "extra": 1})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "Bad Name"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/members/erin",
        Some(json!({"role": "boss"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/members/nobody",
        Some(json!({"role": "guest"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = api(
        &reg,
        erin,
        Method::PUT,
        "/projects/team/members/erin",
        Some(json!({"role": "projectadmin"})),
    )
    .await;
    assert_eq!(s, 403, "no self-promotion");
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/members/erin",
        Some(json!({"role": "projectadmin"})),
    )
    .await;
    assert_eq!(s, 200);
    // Now erin manages team's members and visibility, but not other projects.
    let (s, _) = api(
        &reg,
        erin,
        Method::PATCH,
        "/projects/team",
        Some(json!({"public": true})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = api(&reg, erin, Method::GET, "/projects/team/members", None).await;
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (s, _) = api(
        &reg,
        erin,
        Method::POST,
        "/projects",
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = api(&reg, ADMIN, Method::DELETE, "/users/admin", None).await;
    assert_eq!(s, 400, "admins cannot delete themselves");
    let (s, v) = api(&reg, ADMIN, Method::GET, "/projects", None).await;
    assert_eq!((s, v[0]["public"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, _) = api(&reg, ADMIN, Method::GET, "/robots", None).await;
    assert_eq!(s, 200);
    // An expired robot cannot log in (expiry is in days through the API, so
    // write one that expired a moment ago straight into the store).
    let store = reg.auth.as_ref().unwrap().store().clone();
    let secret = wharf_auth::password::random_secret(wharf_auth::ROBOT_SECRET_PREFIX);
    store
        .create_credential(&wharf_auth::Credential {
            kind: wharf_auth::CredentialKind::Robot,
            owner: String::new(),
            name: "old".into(),
            secret_hash: wharf_auth::password::secret_hash(&secret),
            permissions: vec![wharf_auth::Permission {
                project: "*".into(),
                actions: vec!["pull".into()],
            }],
            expires_at_ms: Some(wharf_auth::now_ms() - 1),
            created_at_ms: 0,
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let r = reg
        .client
        .get(reg.url("/auth/token?service=wharf"))
        .basic_auth("robot$old", Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "expired robot");
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/robots",
        Some(json!({"name": "r", "permissions": [{"project": "team", "actions": ["fly"]}]})),
    )
    .await;
    assert_eq!(s, 400);

    // Pushes, pulls and admin changes are in the audit log, newest first.
    let c = Client::new(&reg, Some(erin));
    assert_eq!(c.push("team/app", "v1").await, 201);
    assert_eq!(c.pull("team/app", "v1").await, 200);
    let outsider_push = Client::new(&reg, None).push("team/app", "v2").await;
    assert_eq!(outsider_push, 401);
    let rows: Vec<(String, String, String)> = audit_rows(&reg, "resource=team/app&limit=10", 3)
        .await
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("erin".into(), "push".into(), "ok".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("erin".into(), "pull".into(), "ok".into())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("anonymous".into(), "push".into(), "denied".into())),
        "{rows:?}"
    );
    let (_, v) = api(&reg, ADMIN, Method::GET, "/audit?action=member.set", None).await;
    assert_eq!(v[0]["resource"], "team/erin=projectadmin");
    assert_eq!(v[0]["actor"], "admin");
    let (s, _) = api(&reg, ADMIN, Method::GET, "/audit?since=abc", None).await;
    assert_eq!(s, 400);
    // Usage: erin sees team's; the pushed image counts.
    let (s, v) = api(&reg, erin, Method::GET, "/projects/team/usage", None).await;
    assert_eq!(s, 200);
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["repositories"][0]["name"], "team/app");
    let (s, _) = api(&reg, erin, Method::GET, "/projects/nope/usage", None).await;
    assert_eq!(s, 404);
    // Deleting a repository: erin administers team; others may not.
    let (s, _) = api(
        &reg,
        erin,
        Method::DELETE,
        "/repositories/other/thing",
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = api(&reg, erin, Method::DELETE, "/repositories/team/app", None).await;
    assert_eq!(s, 204);
    let (s, _) = api(&reg, erin, Method::DELETE, "/repositories/team/app", None).await;
    assert_eq!(s, 404);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::DELETE,
        "/repositories/Not//Valid",
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(c.pull("team/app", "v1").await, 404);
    // Garbage collection through the API: admins only; a dry run reports.
    let (s, _) = api(&reg, erin, Method::POST, "/gc?dry_run=true", None).await;
    assert_eq!(s, 403);
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/gc?dry_run=true&grace_seconds=0",
        None,
    )
    .await;
    assert_eq!((s, v["dry_run"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, _) = api(&reg, ADMIN, Method::POST, "/gc?dry_run=maybe", None).await;
    assert_eq!(s, 400);
    let (s, v) = api(&reg, ADMIN, Method::POST, "/gc?grace_seconds=3600", None).await;
    assert_eq!(
        (s, v["blobs"].as_u64()),
        (StatusCode::OK, Some(0)),
        "everything is younger than an hour"
    );
    let (s, _) = api(&reg, erin, Method::GET, "/audit", None).await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_an_external_issuer() {
    use wharf_auth::token::{Audience, Claims, Signer, VerifyKey};
    let dir = tempfile::tempdir().unwrap();
    let issuer = Signer::load_or_create(&dir.path().join("issuer.pem")).unwrap();
    let keys = VerifyKey::from_jwks(&issuer.jwks().to_string()).unwrap();
    let reg = TestRegistry::builder()
        .auth(AuthSetup::External(keys))
        .spawn()
        .await;
    let r = reg.send(Method::GET, "/v2/team/app/tags/list").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"https://auth.example.com/token\",service=\"ext-registry\",scope=\"repository:team/app:pull\""
    );
    let now = wharf_auth::now_ms() / 1000;
    let grant = |actions: &[&str]| Claims {
        iss: "ext-issuer".into(),
        sub: "someone".into(),
        aud: Audience::Many(vec!["other".into(), "ext-registry".into()]),
        exp: now + 60,
        nbf: now,
        iat: now,
        jti: "j".into(),
        access: vec![wharf_auth::AccessEntry {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }],
        wharf_use: None,
        wharf_via: None,
        wharf_login_ms: None,
    };
    let push = issuer.sign(&grant(&["pull", "push"])).unwrap();
    let r = reg
        .client
        .post(reg.url("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the token's access claim is what counts");
    let pull_only = issuer.sign(&grant(&["pull"])).unwrap();
    let r = reg
        .client
        .post(reg.url("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&pull_only)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let wrong_iss = issuer
        .sign(&Claims {
            iss: "another".into(),
            ..grant(&["pull"])
        })
        .unwrap();
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .bearer_auth(&wrong_iss)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // No passwords and no token service here.
    let r = reg
        .client
        .get(reg.url("/v2/"))
        .basic_auth("admin", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(reg.send(Method::GET, "/auth/token").await.status(), 404);
}

/// `/v2` requests with Basic credentials (the built-in service takes them).
struct Pusher {
    reg_base: String,
    http: reqwest::Client,
    user: String,
    password: String,
}

impl Pusher {
    fn new(reg: &TestRegistry, (user, password): (&str, &str)) -> Pusher {
        Pusher {
            reg_base: reg.url(""),
            http: harness::http_client(),
            user: user.into(),
            password: password.into(),
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.reg_base))
            .basic_auth(&self.user, Some(&self.password))
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> reqwest::Response {
        self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
        )
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
    }

    async fn manifest(&self, repo: &str, reference: &str, m: &[u8]) -> reqwest::Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", harness::OCI_MANIFEST)
            .body(m.to_vec())
            .send()
            .await
            .unwrap()
    }

    /// Pushes an image whose one layer is `layer_size` random bytes; returns
    /// the manifest and its digest.
    async fn image(&self, repo: &str, tag: &str, layer_size: usize) -> (Vec<u8>, String) {
        let (m, blobs) = random_image(layer_size);
        for b in &blobs {
            assert_eq!(
                self.blob(repo, b).await.status(),
                201,
                "blob for {repo}:{tag}"
            );
        }
        let r = self.manifest(repo, tag, &m).await;
        assert_eq!(r.status(), 201, "{repo}:{tag}: {}", r.text().await.unwrap());
        let d = sha256(&m);
        (m, d)
    }

    async fn status(&self, m: Method, path: &str) -> u16 {
        self.req(m, path).send().await.unwrap().status().as_u16()
    }
}

/// A manifest naming a random config and one random layer, with the blobs.
fn random_image(layer_size: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","seed":{}}}"#,
        rand::random::<u64>()
    )
    .into_bytes();
    let layer: Vec<u8> = (0..layer_size).map(|_| rand::random::<u8>()).collect();
    let m = image_manifest(
        &sha256(&config),
        config.len(),
        &[(&sha256(&layer), layer.len())],
        None,
    );
    (m, vec![config, layer])
}

/// The OCI error (code, message) of a response.
async fn oci_error(r: reqwest::Response) -> (u16, String, String) {
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (
        s,
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn uploads_left(reg: &TestRegistry) -> usize {
    std::fs::read_dir(reg.data.join("wharf/uploads"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn project_quota_is_enforced_and_leaves_nothing_behind() {
    let reg = builtin().await;
    let admin = Pusher::new(&reg, ADMIN);
    add_user(&reg, "erin").await;
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/members/erin",
        Some(json!({"role": "projectadmin"})),
    )
    .await;
    assert_eq!(s, 200);
    let erin_pw = pw("erin");
    let erin = ("erin", erin_pw.as_str());
    // Only a system administrator sets a quota.
    let (s, v) = api(
        &reg,
        erin,
        Method::PUT,
        "/projects/team/policy",
        Some(json!({"quota_bytes": 30000})),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/policy",
        Some(json!({"quota_bytes": 30000})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["quota_bytes"], 30000);
    let (s, _) = api(&reg, ADMIN, Method::GET, "/projects/nope/policy", None).await;
    assert_eq!(s, 404);

    let (_, a_digest) = admin.image("team/app", "a", 20000).await;
    let (_, v) = api(&reg, erin, Method::GET, "/projects/team/usage", None).await;
    let used = v["bytes"].as_u64().unwrap();
    assert!((20000..21000).contains(&used), "{v}");
    assert_eq!(v["quota_bytes"], 30000);

    // A blob that cannot fit is refused when it arrives, in one request...
    let (_, blobs) = random_image(20000);
    let (s, code, msg) = oci_error(admin.blob("team/app", &blobs[1]).await).await;
    assert_eq!((s, code.as_str()), (403, "DENIED"), "{msg}");
    assert!(msg.contains("quota exceeded: project team uses"), "{msg}");
    assert_eq!(uploads_left(&reg), 0, "the refused upload left data");
    // ...or chunk by chunk: the session goes with the refusal.
    let r = admin
        .req(Method::POST, "/v2/team/other/blobs/uploads/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = loc.strip_prefix(&reg.url("")).unwrap_or(&loc).to_owned();
    let r = admin
        .req(Method::PATCH, &loc)
        .header("content-type", "application/octet-stream")
        .body(blobs[1].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(oci_error(r).await.1, "DENIED");
    assert_eq!(admin.status(Method::GET, &loc).await, 404);
    assert_eq!(uploads_left(&reg), 0);

    // Two layers that fit one by one but not together: the manifest is
    // refused whole, and no tag or usage changes.
    let small: Vec<Vec<u8>> = (0..2)
        .map(|_| (0..4500).map(|_| rand::random::<u8>()).collect())
        .collect();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    for b in small.iter().chain([&config]) {
        assert_eq!(admin.blob("team/app", b).await.status(), 201);
    }
    let two = image_manifest(
        &sha256(&config),
        config.len(),
        &[
            (&sha256(&small[0]), small[0].len()),
            (&sha256(&small[1]), small[1].len()),
        ],
        None,
    );
    let (s, code, msg) = oci_error(admin.manifest("team/app", "two", &two).await).await;
    assert_eq!((s, code.as_str()), (403, "DENIED"), "{msg}");
    assert!(msg.contains("this push needs"), "{msg}");
    assert_eq!(
        admin
            .status(Method::GET, "/v2/team/app/manifests/two")
            .await,
        404
    );
    let (_, v) = api(&reg, erin, Method::GET, "/projects/team/usage", None).await;
    assert_eq!(v["bytes"].as_u64().unwrap(), used);
    // Re-tagging what is stored adds nothing: allowed at the limit.
    let r = admin
        .req(Method::GET, "/v2/team/app/manifests/a")
        .header("accept", harness::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let a_manifest = r.bytes().await.unwrap();
    assert_eq!(
        admin
            .manifest("team/app", "a-again", &a_manifest)
            .await
            .status(),
        201
    );
    // Deleting the first image frees its share at once: the refused one fits now.
    assert_eq!(
        admin
            .status(
                Method::DELETE,
                &format!("/v2/team/app/manifests/{a_digest}")
            )
            .await,
        202
    );
    assert_eq!(admin.manifest("team/app", "two", &two).await.status(), 201);
    // Other projects are not limited.
    admin.image("free/app", "big", 50000).await;
    // Removing the quota (admin) lets anything in.
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/policy",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    admin.image("team/app", "big", 50000).await;
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn immutable_tags_cannot_be_moved_or_deleted() {
    let reg = builtin().await;
    let admin = Pusher::new(&reg, ADMIN);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "team"})),
    )
    .await;
    assert_eq!(s, 201);
    for bad in [
        json!({"immutable": [{"tags": "["}]}),
        json!({"immutable": [{"tags": ""}]}),
        json!({"retention": [{"keep": {"newest": 0}}]}),
        json!({"retention": [{"keep": "sometimes"}]}),
        json!({"quota": 5}),
    ] {
        let (s, v) = api(
            &reg,
            ADMIN,
            Method::PUT,
            "/projects/team/policy",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(s, 400, "{bad} → {v}");
    }
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/policy",
        Some(json!({"immutable": [{"repositories": "app", "tags": "v*"}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api(&reg, ADMIN, Method::GET, "/projects/team/policy", None).await;
    assert_eq!(v["immutable"][0]["tags"], "v*");

    let (m1, d1) = admin.image("team/app", "v1", 100).await;
    admin.image("team/app", "latest", 100).await;
    // Another image whose blobs are there, so only the tag rule can refuse it.
    let (m2, _) = admin.image("team/app", "other", 100).await;
    // Overwriting v1 with another manifest: refused; with the same one: fine.
    let (s, code, msg) = oci_error(admin.manifest("team/app", "v1", &m2).await).await;
    assert_eq!((s, code.as_str()), (403, "DENIED"), "{msg}");
    assert!(msg.contains("immutable"), "{msg}");
    assert_eq!(admin.manifest("team/app", "v1", &m1).await.status(), 201);
    // `latest` matches no rule: it moves.
    let (_, latest2) = admin.image("team/app", "latest", 100).await;
    let r = admin
        .req(Method::HEAD, "/v2/team/app/manifests/latest")
        .header("accept", harness::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], latest2.as_str());
    // Deleting the tag, the manifest it names or the repository: refused.
    for path in [
        "/v2/team/app/manifests/v1".to_string(),
        format!("/v2/team/app/manifests/{d1}"),
    ] {
        let r = admin.req(Method::DELETE, &path).send().await.unwrap();
        assert_eq!(oci_error(r).await.1, "DENIED", "{path}");
    }
    let (s, _) = api(&reg, ADMIN, Method::DELETE, "/repositories/team/app", None).await;
    assert_eq!(s, 403);
    assert_eq!(
        admin.status(Method::GET, "/v2/team/app/manifests/v1").await,
        200
    );
    // The rule names `app` only: v1 elsewhere in the project is mutable.
    admin.image("team/lib", "v1", 100).await;
    admin.image("team/lib", "v1", 100).await;
    assert_eq!(
        admin
            .status(Method::DELETE, "/v2/team/lib/manifests/v1")
            .await,
        202
    );
    // Lifting the rule makes v1 deletable.
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/team/policy",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        admin
            .status(Method::DELETE, "/v2/team/app/manifests/v1")
            .await,
        202
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_what_the_rules_say_and_dry_runs() {
    let reg = builtin().await;
    let admin = Pusher::new(&reg, ADMIN);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "ret"})),
    )
    .await;
    assert_eq!(s, 201);
    let mut digests = std::collections::BTreeMap::new();
    for t in ["t1", "t2", "rel-1", "t3", "t4", "t5", "pin"] {
        let (_, d) = admin.image("ret/app", t, 64).await;
        digests.insert(t, d);
        // Push times are in ms: keep them apart.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    admin.image("ret/other", "x", 64).await;
    // t2 is pulled (GET; a HEAD is not a pull).
    assert_eq!(
        admin.status(Method::GET, "/v2/ret/app/manifests/t2").await,
        200
    );
    assert_eq!(
        admin.status(Method::HEAD, "/v2/ret/app/manifests/t1").await,
        200
    );
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/ret/policy",
        Some(json!({
            "immutable": [{"tags": "pin"}],
            "retention": [
                {"repositories": "app", "tags": "t*", "keep": {"newest": 2}},
                {"repositories": "app", "tags": "rel-*", "keep": "always"},
                {"repositories": "app", "keep": {"pulled_within_days": 7}},
            ]
        })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let tags_of = |v: &Value| -> Vec<String> {
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["repository"].as_str().unwrap(),
                    t["tag"].as_str().unwrap()
                )
            })
            .collect()
    };
    // newest 2 of t* keeps t5, t4; rel-1 always; t2 was pulled; pin is
    // immutable; ret/other is named by no rule. t3 and t1 go.
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects/ret/retention?dry_run=true",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tags_of(&v), ["ret/app:t3", "ret/app:t1"], "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["manifests"], 2);
    // Still there (a HEAD: a GET would be a pull, and keep t1).
    assert_eq!(
        admin.status(Method::HEAD, "/v2/ret/app/manifests/t1").await,
        200
    );
    let (s, v) = api(&reg, ADMIN, Method::POST, "/projects/ret/retention", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(tags_of(&v), ["ret/app:t3", "ret/app:t1"]);
    assert_eq!(v["manifests"], 2);
    for (t, d) in &digests {
        let gone = matches!(*t, "t1" | "t3");
        let want = if gone { 404 } else { 200 };
        assert_eq!(
            admin
                .status(Method::GET, &format!("/v2/ret/app/manifests/{t}"))
                .await,
            want,
            "{t}"
        );
        // The image went with its last tag.
        assert_eq!(
            admin
                .status(Method::GET, &format!("/v2/ret/app/manifests/{d}"))
                .await,
            want,
            "{t} by digest"
        );
    }
    assert_eq!(
        admin.status(Method::GET, "/v2/ret/other/manifests/x").await,
        200
    );
    // A second run finds nothing more; the audit log names what went.
    let (_, v) = api(&reg, ADMIN, Method::POST, "/projects/ret/retention", None).await;
    assert!(tags_of(&v).is_empty(), "{v}");
    let audited = audit_rows(&reg, "action=retention.delete", 2).await;
    let mut res: Vec<&str> = audited
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    res.sort();
    assert_eq!(res, ["ret/app:t1", "ret/app:t3"]);
    // A developer may not run retention; a project admin may.
    add_user(&reg, "dev").await;
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::PUT,
        "/projects/ret/members/dev",
        Some(json!({"role": "developer"})),
    )
    .await;
    assert_eq!(s, 200);
    let dev_pw = pw("dev");
    let (s, _) = api(
        &reg,
        ("dev", &dev_pw),
        Method::POST,
        "/projects/ret/retention?dry_run=true",
        None,
    )
    .await;
    assert_eq!(s, 403);
    reg.stop().await;
}

/// Manifests the untagged policy deletes are in the audit log, under the
/// administrator who started the collection, with a summary of the run.
#[tokio::test(flavor = "multi_thread")]
async fn untagged_deletions_are_audited() {
    let reg = builtin().await;
    let admin = Pusher::new(&reg, ADMIN);
    let (s, _) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/projects",
        Some(json!({"name": "lib"})),
    )
    .await;
    assert_eq!(s, 201);
    let (_, old) = admin.image("lib/app", "old", 64).await;
    admin.image("lib/app", "kept", 64).await;
    // Deleting the tag leaves the manifest untagged.
    assert_eq!(
        admin
            .status(Method::DELETE, "/v2/lib/app/manifests/old")
            .await,
        202
    );
    // "Untagged for longer than 0 s": in the same millisecond it is not yet.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (s, v) = api(
        &reg,
        ADMIN,
        Method::POST,
        "/gc?grace_seconds=0&untagged_age_seconds=0",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["manifests"], 1, "{v}");
    let rows = audit_rows(&reg, "action=gc.untagged.delete", 1).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["actor"], "admin");
    assert_eq!(rows[0]["resource"], format!("lib/app@{old}"));
    let (_, v) = api(&reg, ADMIN, Method::GET, "/audit?action=gc", None).await;
    assert_eq!(v[0]["actor"], "admin", "{v}");
    assert_eq!(
        admin
            .status(Method::GET, "/v2/lib/app/manifests/kept")
            .await,
        200
    );
    reg.stop().await;
}
