//! The buildah flow.

use super::*;

pub(crate) fn buildah_flow(e: &Eng, inp: &Inputs) -> Results {
    let t0 = Instant::now();
    let b = |args: &[&str]| e.ok("buildah", args);
    let run = |c: &str, script: &str| {
        b(&[
            "run",
            "--isolation",
            "oci",
            "--network",
            "none",
            c,
            "--",
            "sh",
            "-c",
            script,
        ])
    };

    let c = b(&["from", "--pull-never", "scratch"]).trim().to_string();
    b(&["add", &c, &inp.rootfs_tar, "/"]);
    b(&["commit", "-q", &c, "localhost/bb"]);
    b(&["rm", &c]);

    b(&[
        "bud",
        "--pull-never",
        "--layers",
        "--isolation",
        "oci",
        "--network",
        "none",
        "-t",
        "localhost/built",
        "-f",
        &inp.containerfile,
        &inp.ctx,
    ]);
    let c = b(&["from", "--pull-never", "localhost/built"])
        .trim()
        .to_string();
    let got = run(&c, BUILT_CHECK);
    assert_eq!(
        got.trim_end(),
        BUILT_WANT,
        "[{}] buildah: content of the built image",
        e.label
    );
    run(&c, C1_SCRIPT);
    let got = run(
        &c,
        "ls /data | tr '\\n' ' '; echo; test -e /bin/cat || echo nocat; cat /data/deep/f",
    );
    assert_eq!(
        got.trim_end(),
        "added.txt deep moved new own sub sym \nnocat\nfresh",
        "[{}] buildah run after deletions",
        e.label
    );
    b(&["commit", "-q", &c, "localhost/committed"]);
    b(&["rm", &c]);

    // The committed image's tree through `buildah mount` of a new working container.
    let c = b(&["from", "--pull-never", "localhost/committed"])
        .trim()
        .to_string();
    let mtar = e.p("mount.tar");
    e.host_sh(
        "buildah",
        &format!(
            "m=$(buildah mount {c}) || exit 1; tar --numeric-owner --sort=name -C \"$m\" -cf '{mtar}' .; \
             rc=$?; buildah umount {c} >/dev/null || rc=1; exit $rc"
        ),
    );
    b(&["rm", &c]);
    let mount_tree = tree_lines(&read_tar(&mtar));
    for gone in [
        "data/hard ",
        "opq",
        "bin/cat ",
        "bin/vi ",
        "data/sub/b ",
        "data/deep/x",
    ] {
        assert!(
            !has_line(&mount_tree, gone),
            "[{}] buildah: committed image still has {gone:?}",
            e.label
        );
    }
    assert!(
        has_line(&mount_tree, "data/new - 0644 0:0 size=2"),
        "[{}] buildah: no data/new:\n{}",
        e.label,
        mount_tree.join("\n")
    );

    let save = e.p("push.tar");
    b(&[
        "push",
        "localhost/committed",
        &format!("oci-archive:{save}"),
    ]);
    let layers = oci_layers(&save);
    assert_saved_whiteouts(&e.label, &layers);
    e.assert_no_leftovers();
    eprintln!("[{}] buildah flow ok in {:.1?}", e.label, t0.elapsed());
    Results {
        label: e.label.clone(),
        diff: vec![],
        export_tree: vec![],
        mount_tree,
        layers,
    }
}

pub(crate) fn buildah_test(name: &str, rootless: bool) {
    let progs: &[&str] = if rootless {
        &["buildah", "podman", "runc", "newuidmap", "runuser"]
    } else {
        &["buildah", "podman", "runc"]
    };
    if !engines_ready(name, progs) {
        return;
    }
    side_by_side(name, rootless, true, buildah_flow);
}

#[test]
pub(crate) fn buildah_rootful_bud_and_commit() {
    buildah_test("buildah-rootful", false);
}

#[test]
pub(crate) fn buildah_rootless_bud_and_commit() {
    buildah_test("buildah-rootless", true);
}
