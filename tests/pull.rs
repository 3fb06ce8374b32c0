//! `strata unpack docker://…` against real registries on loopback: Debian's `docker-registry`
//! (plain HTTP, TLS with the test's own CA, htpasswd Basic auth), behind a proxy of the tests'
//! (`common/proxy.rs`) where the test needs Bearer tokens, a log of what was asked, or faults.
//! Images are pushed by skopeo from OCI layouts, and every pulled tree is compared with the
//! tree of the same image unpacked from its layout.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// A registry of `security`, holding the sample image as `name`, with a test env and the
/// image's layout; `None` without the registry's tools (outside CI).
fn sample_in(security: Security, name: &str) -> Option<(Registry, TestEnv, WrittenImage)> {
    let registry = Registry::start(security)?;
    let env = TestEnv::new();
    let image = sample_image(&env.path().join("layout"));
    registry.push(&format!("oci:{}:v1", image.path.display()), name);
    Some((registry, env, image))
}

/// `strata unpack EXTRA… SOURCE` into a new DEST named `dest`, which must hold the tree
/// `image` has unpacked from its layout.
fn pulls_the_layouts_tree(
    env: &TestEnv,
    image: &WrittenImage,
    extra: &[&str],
    source: impl AsRef<std::ffi::OsStr>,
    dest: &str,
) {
    let dest = env.dest(dest);
    env.unpack_with(extra, source, &dest).success();
    assert_same_tree(
        ("layout", &layout_tree(env, image)),
        ("pulled", &Tree::scan(&dest)),
    );
}

#[test]
fn a_pull_gives_the_layouts_tree_in_every_mode() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "team/app:v1") else {
        return;
    };
    let expected = layout_tree(&env, &image);

    let [stored, _] =
        unpack_both_with(&env, &["--tls-verify=false"], registry.image("team/app:v1"));
    let source = format!("docker://{}/team/app:v1", registry.addr);
    assert_eq!(stored.report["source"], source.as_str());
    assert_same_tree(("layout", &expected), ("pulled", &stored.tree));
    assert_eq!(stored.report["manifest"], image.manifest_digest.as_str());
    assert_eq!(stored.report["chain_id"], image.chain_id().as_str());

    // By digest, as skopeo and podman name it.
    let by_digest = registry.image(&format!("team/app@{}", image.manifest_digest));
    let dest = fresh_dest(&env, Mode::NoStore);
    run_unpack(
        &env,
        Mode::NoStore,
        &["--tls-verify=false"],
        by_digest.as_ref(),
        &dest,
    )
    .success();
    assert_same_tree(("layout", &expected), ("by digest", &Tree::scan(&dest)));

    // The store records where the image came from.
    let listed = env
        .strata(args!["ls", "--store", env.store()])
        .success()
        .stdout
        .clone();
    assert!(
        listed.contains(&source),
        "ls does not show {source}: {listed}"
    );
    env.strata(args!["rm", "--store", env.store(), source])
        .success();
    let listed = env
        .strata(args!["ls", "--store", env.store()])
        .success()
        .stdout
        .clone();
    assert!(!listed.contains("team/app"), "{listed}");
}

#[test]
fn a_warm_pull_fetches_only_the_manifest_and_config() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let proxy = Proxy::start(&registry.addr);
    let pull = |dest: &Path| env.unpack_with(&["--tls-verify=false"], proxy.image("app:v1"), dest);

    pull(&env.dest("rootfs-cold")).success();
    let cold = proxy.take_log();
    let layer_gets = |log: &[Logged]| {
        log.iter()
            .filter(|r| image.layers.iter().any(|l| r.path.ends_with(&l.digest)))
            .count()
    };
    // Each at least once: pulled side by side (three at once, by default), a layer that
    // writes into directories it does not make itself is fetched again, once the layers
    // below are in place.
    for layer in &image.layers {
        assert!(
            cold.iter().any(|r| r.path.ends_with(&layer.digest)),
            "{cold:#?}"
        );
    }

    let out = pull(&env.dest("rootfs-warm"));
    let warm = proxy.take_log();
    let report = out.json();
    assert!(
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["cached"] == true)
    );
    assert_eq!(layer_gets(&warm), 0, "{warm:#?}");
    let paths: Vec<&str> = warm.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v2/".to_owned(),
            "/v2/app/manifests/v1".to_owned(),
            format!("/v2/app/blobs/{}", image.config_digest),
        ],
        "{warm:#?}"
    );
}

#[test]
fn tls_with_the_registrys_ca_or_without_verification() {
    let Some((registry, env, image)) = sample_in(Security::Tls, "app:v1") else {
        return;
    };
    let source = registry.image("app:v1");

    let dest = env.dest("rootfs-untrusted");
    let line = env.unpack_with(&[], &source, &dest).failure().to_owned();
    assert_mentions(
        &line,
        &[
            "TLS verification failed",
            &registry.addr,
            "--cert-dir",
            "--tls-verify=false",
        ],
    );
    assert!(!dest.exists());

    let certs = registry.cert_dir(env.path());
    let cert_dir = format!("--cert-dir={}", certs.display());
    pulls_the_layouts_tree(&env, &image, &[&cert_dir], &source, "rootfs-ca");

    // The CA where podman looks by default: ~/.config/containers/certs.d/HOST:PORT.
    let user_certs = env
        .path()
        .join(".config/containers/certs.d")
        .join(&registry.addr);
    fs::create_dir_all(&user_certs).unwrap();
    fs::copy(certs.join("ca.crt"), user_certs.join("ca.crt")).unwrap();
    let dest = env.dest("rootfs-certs-d");
    env.unpack_with(&[], &source, &dest).success();
    fs::remove_dir_all(env.path().join(".config")).unwrap();

    // And where the system keeps them, which only root may write: as in CI. The registry's
    // HOST:PORT directory is the test's own, and whatever the test made is removed after.
    if running_as_root() {
        for system_certs in ["/etc/containers/certs.d", "/etc/docker/certs.d"] {
            let made = MadeDir::new(&Path::new(system_certs).join(&registry.addr));
            fs::copy(certs.join("ca.crt"), made.path.join("ca.crt")).unwrap();
            let dest = format!("rootfs{}", system_certs.replace('/', "-"));
            pulls_the_layouts_tree(&env, &image, &[], &source, &dest);
        }
    }

    pulls_the_layouts_tree(
        &env,
        &image,
        &["--tls-verify=false"],
        &source,
        "rootfs-unverified",
    );
}

/// A directory made for a test outside its scratch space, 0755 whatever the umask (the CLI
/// runs as another user). On drop it is removed with what the test put in it, and so is each
/// parent made for it that nothing else has filled meanwhile.
struct MadeDir {
    path: std::path::PathBuf,
    made_parents: Vec<std::path::PathBuf>,
}

impl MadeDir {
    fn new(path: &Path) -> MadeDir {
        let made_parents = path
            .ancestors()
            .skip(1)
            .take_while(|dir| !dir.exists())
            .map(Path::to_owned)
            .collect();
        // Built first: a failure half-way still removes what was made.
        let made = MadeDir {
            path: path.to_owned(),
            made_parents,
        };
        for dir in made.made_parents.iter().rev().chain([&made.path]) {
            fs::create_dir(dir).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        made
    }
}

impl Drop for MadeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        // Innermost first; one that holds something else now stays.
        for dir in &self.made_parents {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn basic_auth_from_creds_auth_files_and_credential_helpers() {
    let (user, password) = ("alice", "s3cret:with:colons");
    let Some((registry, env, image)) = sample_in(
        Security::Htpasswd {
            user: user.into(),
            password: password.into(),
        },
        "app:v1",
    ) else {
        return;
    };
    let source = registry.image("app:v1");
    let no_tls = "--tls-verify=false";

    let line = env
        .unpack_with(&[no_tls], &source, env.dest("rootfs-anon"))
        .failure()
        .to_owned();
    assert_mentions(
        &line,
        &[
            "401",
            "no credentials for",
            &registry.addr,
            ".docker/config.json",
        ],
    );
    let line = env
        .unpack_with(
            &[no_tls, &format!("--creds={user}:wrong")],
            &source,
            env.dest("rootfs-wrong"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &["401", "refused", &registry.addr]);

    env.unpack_with(
        &[no_tls, &format!("--creds={user}:{password}")],
        &source,
        env.dest("rootfs-creds"),
    )
    .success();

    let auth = BASE64.encode(format!("{user}:{password}"));
    let authfile = env.path().join("auth.json");
    fs::write(
        &authfile,
        format!(
            r#"{{"auths":{{"{}/app":{{"auth":"{auth}"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let authfile_arg = format!("--authfile={}", authfile.display());
    env.unpack_with(
        &[no_tls, &authfile_arg],
        &source,
        env.dest("rootfs-authfile"),
    )
    .success();

    // A file the user names is the only one read: not ~/.docker/config.json, whose
    // credentials would work.
    let other = env.path().join("other.json");
    fs::write(&other, r#"{"auths":{}}"#).unwrap();
    fs::create_dir_all(env.path().join(".docker")).unwrap();
    fs::write(
        env.path().join(".docker/config.json"),
        fs::read(&authfile).unwrap(),
    )
    .unwrap();
    let other_arg = format!("--authfile={}", other.display());
    let line = env
        .unpack_with(&[no_tls, &other_arg], &source, env.dest("rootfs-other"))
        .failure()
        .to_owned();
    assert_mentions(&line, &["no credentials for", &other.display().to_string()]);
    assert!(!line.contains(".docker"), "{line}");
    // Without it, ~/.docker/config.json is read. A credsStore helper that is not installed
    // (left by a Docker Desktop that is gone) has nothing, and is no error: the pull goes on
    // anonymously, and the registry's 401 says where credentials were looked for.
    fs::write(
        env.path().join(".docker/config.json"),
        format!(
            r#"{{"credsStore":"gone","auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let line = env
        .unpack_with(&[no_tls], &source, env.dest("rootfs-gone-helper"))
        .failure()
        .to_owned();
    assert_mentions(&line, &["no credentials for"]);
    fs::remove_file(env.path().join(".docker/config.json")).unwrap();

    // $REGISTRY_AUTH_FILE, as podman reads it.
    let dest = env.dest("rootfs-env");
    let mut command = env.strata_command(args!["unpack", "--no-store", no_tls, &source, &dest]);
    command.env("REGISTRY_AUTH_FILE", &authfile);
    run(&mut command).success();

    // ~/.docker/config.json naming a credential helper for the registry.
    let bin = env.mkdir("bin");
    let helper = bin.join("docker-credential-strata-test");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found'; exit 1; }}\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}'\n",
            registry.addr
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(env.path().join(".docker")).unwrap();
    let with_helper_on_path = |dest: &Path| {
        let mut command = env.strata_command(args!["unpack", "--no-store", no_tls, &source, dest]);
        command.env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
        run(&mut command).success();
    };
    let expected = layout_tree(&env, &image);
    // The helper named for this registry, then the one named for every registry.
    for config in [
        format!(r#"{{"credHelpers":{{"{}":"strata-test"}}}}"#, registry.addr),
        r#"{"credsStore":"strata-test"}"#.to_owned(),
    ] {
        fs::write(env.path().join(".docker/config.json"), &config).unwrap();
        let dest = fresh_dest(&env, Mode::NoStore);
        with_helper_on_path(&dest);
        assert_same_tree(("layout", &expected), (&config, &Tree::scan(&dest)));
    }
}

#[test]
fn bearer_tokens_from_the_token_server() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let proxy = Proxy::start(&registry.addr);
    let source = proxy.image("app:v1");
    let no_tls = "--tls-verify=false";

    proxy.bearer(Bearer {
        user: Some(("bob".into(), "pw".into())),
        ..Default::default()
    });
    let line = env
        .unpack_with(
            &[no_tls, "--creds=bob:nope"],
            &source,
            env.dest("rootfs-wrong"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &["401", "refused", &proxy.addr]);
    proxy.take_log();
    env.unpack_with(
        &[no_tls, "--creds=bob:pw"],
        &source,
        env.dest("rootfs-token"),
    )
    .success();
    let log = proxy.take_log();
    let token_requests: Vec<&Logged> = log
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert!(!token_requests.is_empty(), "{log:#?}");
    assert!(
        token_requests[0]
            .path
            .contains("scope=repository%3Aapp%3Apull"),
        "{log:#?}"
    );
    assert_eq!(
        token_requests[0].authorization.as_deref(),
        Some(&*format!("Basic {}", BASE64.encode("bob:pw")))
    );
    assert!(
        log.iter()
            .filter(|r| r.is_blob() && r.status == 200)
            .all(|r| r.authorization.as_deref() == Some("Bearer test-token")),
        "{log:#?}"
    );

    // A registry that gives anyone a token: no credentials needed.
    proxy.bearer(Bearer::default());
    pulls_the_layouts_tree(&env, &image, &[no_tls], &source, "rootfs-anonymous");
}

#[test]
fn network_faults_end_in_the_right_tree_or_a_clear_error() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let proxy = Proxy::start(&registry.addr);
    let source = proxy.image("app:v1");
    let no_tls = "--tls-verify=false";
    let big_layer = &image.layers[0].digest;

    // Dropped twice mid-blob: resumed from the byte reached.
    proxy.fault(
        big_layer,
        Fault::Cut {
            after: 1000,
            times: 2,
        },
    );
    pulls_the_layouts_tree(&env, &image, &[no_tls], &source, "rootfs-cut");
    let log = proxy.take_log();
    assert!(
        log.iter()
            .any(|r| r.range.as_deref() == Some("bytes=1000-")),
        "no Range request: {log:#?}"
    );
    env.strata(args!["gc", "--store", env.store()]).success();
    fs::remove_dir_all(env.store()).unwrap();

    // 503 and 429, waited out.
    proxy.fault(
        big_layer,
        Fault::Status {
            status: 503,
            times: 2,
        },
    );
    proxy.fault(
        big_layer,
        Fault::Status {
            status: 429,
            times: 2,
        },
    );
    proxy.fault(
        &image.config_digest,
        Fault::Status {
            status: 502,
            times: 1,
        },
    );
    pulls_the_layouts_tree(&env, &image, &[no_tls], &source, "rootfs-busy");
    fs::remove_dir_all(env.store()).unwrap();

    // A registry that stays down: one line naming the registry, the layer and the status;
    // nothing committed.
    proxy.fault(
        big_layer,
        Fault::Status {
            status: 503,
            times: 1000,
        },
    );
    let dest = env.dest("rootfs-down");
    let line = env
        .unpack_with(&[no_tls], &source, &dest)
        .failure()
        .to_owned();
    assert_mentions(
        &line,
        &["HTTP 503", &proxy.addr, "app", "layer 1/3", big_layer],
    );
    assert!(!dest.exists());
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));

    // A connection that breaks off before a byte of the blob, every time: a clear error,
    // nothing committed. (One that breaks off after some bytes each time is resumed to the
    // end, as it should be.)
    drop(proxy);
    let proxy = Proxy::start(&registry.addr);
    let source = proxy.image("app:v1");
    proxy.fault(
        big_layer,
        Fault::Cut {
            after: 0,
            times: 1000,
        },
    );
    let dest = env.dest("rootfs-broken");
    let line = env
        .unpack_with(&[no_tls], &source, &dest)
        .failure()
        .to_owned();
    assert_mentions(&line, &["broke off", &proxy.addr, "layer 1/3", big_layer]);
    assert!(snapshots(&env).is_empty(), "{:?}", snapshots(&env));

    // Blobs redirected to another host (blob storage): it gets no credentials.
    let storage = Proxy::start(&registry.addr);
    let front = Proxy::start(&registry.addr);
    front.bearer(Bearer {
        user: Some(("bob".into(), "pw".into())),
        ..Default::default()
    });
    front.redirect_blobs(&storage.addr);
    pulls_the_layouts_tree(
        &env,
        &image,
        &[no_tls, "--creds=bob:pw"],
        front.image("app:v1"),
        "rootfs-redirected",
    );
    let stored = storage.take_log();
    assert!(
        stored.iter().filter(|r| r.is_blob()).count() >= 3,
        "{stored:#?}"
    );
    assert!(
        stored.iter().all(|r| r.authorization.is_none()),
        "{stored:#?}"
    );

    // Blob storage that answers 401 with a challenge of its own: the user's credentials are
    // not the storage's to have, so neither it nor the token server it names gets them.
    let hostile = Proxy::start(&registry.addr);
    hostile.bearer(Bearer {
        user: Some(("bob".into(), "pw".into())),
        ..Default::default()
    });
    front.redirect_blobs(&hostile.addr);
    let dest = env.dest("rootfs-hostile");
    let line = env
        .unpack_with(&[no_tls, "--creds=bob:pw"], front.image("app:v1"), &dest)
        .failure()
        .to_owned();
    assert_mentions(&line, &["HTTP 401", "redirected to", &hostile.addr]);
    let asked = hostile.take_log();
    assert!(!asked.is_empty(), "the blob was not redirected");
    assert!(
        asked
            .iter()
            .all(|r| r.authorization.is_none() && !r.path.starts_with("/token")),
        "{asked:#?}"
    );
}

#[test]
fn what_is_missing_is_named() {
    let Some((registry, env, _)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let no_tls = "--tls-verify=false";

    let line = env
        .unpack_with(
            &[no_tls],
            registry.image("app:nope"),
            env.dest("rootfs-tag"),
        )
        .failure()
        .to_owned();
    assert_mentions(
        &line,
        &[
            &registry.addr,
            "app",
            "manifest nope",
            "not found",
            "MANIFEST_UNKNOWN",
        ],
    );
    let line = env
        .unpack_with(
            &[no_tls],
            registry.image("other:v1"),
            env.dest("rootfs-repo"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &[&registry.addr, "other", "not found"]);

    let nobody = format!("docker://127.0.0.1:{}/app:v1", free_port());
    let line = env
        .unpack_with(&[no_tls], &nobody, env.dest("rootfs-nobody"))
        .failure()
        .to_owned();
    assert_mentions(&line, &["127.0.0.1", "app", "GET /v2/"]);
}

#[test]
fn progress_shows_on_a_terminal_only() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let source = registry.image("app:v1");
    let store = env.store();

    // stderr is not a terminal: nothing but warnings.
    let pipe_dest = env.dest("rootfs-pipe");
    let out = run_unpack(
        &env,
        Mode::NoStore,
        &["--tls-verify=false"],
        source.as_ref(),
        &pipe_dest,
    );
    out.success();
    assert!(!out.stderr.contains("layer 1/3"), "{out}");

    // On a terminal (script(1) gives it one): a line per layer, with bytes and rate; then,
    // warm, "cached".
    let on_terminal = |extra: &str, dest: &str| {
        let line = format!(
            "{} unpack --store {} --tls-verify=false {extra} {source} {}",
            strata_bin().display(),
            store.display(),
            env.dest(dest).display()
        );
        let out =
            run(env
                .command("script")
                .env("TERM", "xterm")
                .args(["-qec", &line, "/dev/null"]));
        out.success();
        out.stdout
    };
    let cold = on_terminal("", "rootfs-cold");
    for (index, layer) in image.layers.iter().enumerate() {
        let short = &layer.digest[7..19];
        assert!(
            cold.contains(&format!("layer {}/3 {short}", index + 1)),
            "{cold}"
        );
        if layer.size < 1024 {
            let bytes = format!("{} B/{} B", layer.size, layer.size);
            assert!(cold.contains(&bytes), "no {bytes}: {cold}");
        }
    }
    assert!(cold.contains("B/s"), "{cold}");
    let warm = on_terminal("", "rootfs-warm");
    assert!(
        warm.contains("layer 3/3") && warm.contains("cached"),
        "{warm}"
    );
    let quiet = on_terminal("--quiet", "rootfs-quiet");
    assert!(!quiet.contains("layer"), "{quiet}");
}

#[test]
fn identity_tokens_are_traded_for_access_tokens() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let proxy = Proxy::start(&registry.addr);
    proxy.bearer(Bearer {
        refresh_token: Some("refresh-me".into()),
        ..Default::default()
    });
    let authfile = env.path().join("auth.json");
    fs::write(
        &authfile,
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"refresh-me"}}}}}}"#,
            proxy.addr
        ),
    )
    .unwrap();
    let authfile = format!("--authfile={}", authfile.display());
    let dest = env.dest("rootfs-identity");
    env.unpack_with(
        &["--tls-verify=false", &authfile],
        proxy.image("app:v1"),
        &dest,
    )
    .success();
    assert_same_tree(
        ("layout", &layout_tree(&env, &image)),
        ("identity token", &Tree::scan(&dest)),
    );
    let log = proxy.take_log();
    assert!(
        log.iter()
            .any(|r| r.method == "POST" && r.path.starts_with("/token") && r.status == 200),
        "{log:#?}"
    );
}

#[test]
fn tampered_content_is_refused_and_nothing_committed() {
    let Some((registry, env, image)) = sample_in(Security::Plain, "app:v1") else {
        return;
    };
    let proxy = Proxy::start(&registry.addr);
    let source = proxy.image("app:v1");
    let no_tls = "--tls-verify=false";
    let tamper = Fault::Tamper { at: 500, times: 1 };

    proxy.fault_at("/manifests/v1", tamper.clone());
    let line = env
        .unpack_with(&[no_tls], &source, env.dest("rootfs-manifest"))
        .failure()
        .to_owned();
    assert_mentions(
        &line,
        &[
            "manifest v1",
            "Docker-Content-Digest",
            &image.manifest_digest,
            "corrupt",
        ],
    );

    proxy.fault(&image.config_digest, tamper.clone());
    let line = env
        .unpack_with(&[no_tls], &source, env.dest("rootfs-config"))
        .failure()
        .to_owned();
    assert_mentions(&line, &["config", &image.config_digest, "corrupt"]);

    // Each layer in turn: the layers below it may be committed (they are sound), but not it.
    let chain_ids = image.chain_ids();
    for (layer, chain_id) in image.layers.iter().zip(&chain_ids) {
        proxy.fault(&layer.digest, tamper.clone());
        let dest = env.dest(&format!("rootfs-{}", &layer.digest[7..19]));
        let line = env
            .unpack_with(&[no_tls], &source, &dest)
            .failure()
            .to_owned();
        assert_mentions(&line, &[&layer.digest, "does not match its content"]);
        assert!(!dest.exists());
        let committed = snapshots(&env);
        assert!(
            !committed.contains(&hex(chain_id).to_owned()),
            "{committed:?}"
        );
    }

    // Nothing was left that the next pull trips on.
    pulls_the_layouts_tree(&env, &image, &[no_tls], &source, "rootfs-clean");
}

#[test]
fn manifest_lists_pick_the_platform() {
    let Some(registry) = Registry::start(Security::Plain) else {
        return;
    };
    let env = TestEnv::new();
    let here = format!("linux/{}", host_arch());
    let there = format!("linux/{}", foreign_arch());
    let index = ImageIndex::new()
        .image(
            Image::new()
                .platform(&here)
                .layer(Layer::new().file("arch", b"here", 0o644)),
        )
        .image(
            Image::new()
                .platform(&there)
                .layer(Layer::new().file("arch", b"there", 0o644)),
        )
        .nested()
        .tag("v1")
        .write(&env.path().join("index"));
    let layout = format!("oci:{}:v1", index.path.display());
    registry.push_all(&layout, "multi:v1");
    // The same, converted to a Docker manifest list of Docker schema 2 manifests.
    registry.push_with(&["--all", "--format", "v2s2"], &layout, "multi:docker");
    assert_eq!(
        registry.raw_manifest("multi:docker")["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    for (platform, contents, written) in [
        (None, "here", &index.images[0]),
        (Some(&there), "there", &index.images[1]),
    ] {
        let mut extra = vec!["--tls-verify=false".to_owned()];
        extra.extend(platform.map(|p| format!("--platform={p}")));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let [stored, _] = unpack_both_with(&env, &extra, registry.image("multi:v1"));
        assert_file(&stored.tree, "arch", contents.as_bytes());
        assert_eq!(stored.report["manifest"], written.manifest_digest.as_str());
        let [docker, _] = unpack_both_with(&env, &extra, registry.image("multi:docker"));
        assert_same_tree(("OCI index", &stored.tree), ("Docker list", &docker.tree));
        assert_eq!(docker.report["chain_id"], written.chain_id().as_str());
    }
    let line = env
        .unpack_with(
            &["--tls-verify=false", "--platform=linux/s390x"],
            registry.image("multi:v1"),
            env.dest("rootfs-s390x"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &["no image for linux/s390x", &here, &there]);
}

#[test]
fn client_certificates_from_the_cert_dir() {
    let Some((registry, env, image)) = sample_in(Security::MutualTls, "app:v1") else {
        return;
    };
    let certs = registry.cert_dir(env.path());
    let cert_dir = format!("--cert-dir={}", certs.display());

    pulls_the_layouts_tree(
        &env,
        &image,
        &[&cert_dir],
        registry.image("app:v1"),
        "rootfs-client-cert",
    );

    // Without the client's certificate, the registry ends the handshake.
    fs::remove_file(certs.join("client.cert")).unwrap();
    fs::remove_file(certs.join("client.key")).unwrap();
    let line = env
        .unpack_with(
            &[&cert_dir],
            registry.image("app:v1"),
            env.dest("rootfs-no-cert"),
        )
        .failure()
        .to_owned();
    assert_mentions(&line, &[&registry.addr, "TLS"]);
}
