//! The podman flow, rootful and rootless.

use super::*;

pub(crate) fn podman_flow(e: &Eng, inp: &Inputs) -> Results {
    let t0 = Instant::now();
    let rootless = e.rootless.is_some();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let mut lap = |name: &str, t: &mut Instant| {
        steps.push((name.to_string(), t.elapsed()));
        *t = Instant::now();
    };
    let mut t = Instant::now();

    e.podman(&["import", &inp.rootfs_tar, "localhost/bb"]);
    lap("import", &mut t);

    // A container that writes and deletes, then a fresh one that sees the image intact.
    e.expect(
        "run that writes and deletes",
        &[
            "run",
            "--rm",
            "localhost/bb",
            "sh",
            "-c",
            "echo hi > /f; cat /f; rm /bin/ls; rm -rf /data/sub; echo x >> /data/keep; \
           busybox ls /data | tr '\\n' ' '; echo; test -e /bin/ls || echo no-ls; cat /data/keep",
        ],
        "hi\na deep keep own \nno-ls\nkeep\nx",
    );
    e.expect(
        "a new container sees the image unchanged",
        &[
            "run",
            "--rm",
            "localhost/bb",
            "sh",
            "-c",
            "test -e /bin/ls && test ! -e /f && cat /data/keep && ls /data/sub",
        ],
        "keep\nb",
    );
    lap("run", &mut t);

    let build = |tag: &str| -> String {
        let o = e.run(
            "podman",
            &[
                "build",
                "--network",
                "none",
                "--layers",
                "-t",
                tag,
                "-f",
                &inp.containerfile,
                &inp.ctx,
            ],
        );
        assert!(
            o.status.success(),
            "[{}] podman build -t {tag} failed:\n{}",
            e.label,
            show_output(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    build("localhost/built");
    lap("build", &mut t);
    // Includes the regression check for fuse-overlayfs 1.10: after
    // `rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/c` the old b must be gone.
    e.expect(
        "content of the built image",
        &["run", "--rm", "localhost/built", "sh", "-c", BUILT_CHECK],
        BUILT_WANT,
    );
    let rebuild = build("localhost/built2");
    let hits = rebuild.matches("Using cache").count();
    assert_eq!(
        hits, BUILD_STEPS,
        "[{}] rebuild: {hits} cache hits, want {BUILD_STEPS}:\n{rebuild}",
        e.label
    );
    let id = |img: &str| e.podman(&["image", "inspect", "--format", "{{.Id}}", img]);
    assert_eq!(
        id("localhost/built"),
        id("localhost/built2"),
        "[{}] the cached rebuild made a different image",
        e.label
    );
    lap("rebuild (cached)", &mut t);

    e.podman(&[
        "run",
        "--name",
        "writer",
        "localhost/built",
        "sh",
        "-c",
        C1_SCRIPT,
    ]);
    let mut diff: Vec<String> = e
        .podman(&["diff", "writer"])
        .lines()
        .map(str::to_string)
        .collect();
    diff.sort();
    for want in [
        "A /data/new",
        "A /newdir",
        "C /data/moved",
        "D /bin/cat",
        "D /data/hard",
        "D /opq",
    ] {
        assert!(
            diff.iter().any(|l| l == want),
            "[{}] podman diff writer lacks {want:?}:\n{}",
            e.label,
            diff.join("\n")
        );
    }
    e.podman(&["commit", "-q", "writer", "localhost/committed"]);
    e.expect(
        "content of the committed image",
        &["run", "--rm", "localhost/committed", "sh", "-c",
          "cat /data/new /data/moved; test -e /bin/cat || echo nocat; test -e /opq || echo noopq; \
           ls /data | tr '\\n' ' '; echo; ls /data/deep; stat -c %a /data/sub"],
        "w\nkeep\nappended\nmore\nnocat\nnoopq\nadded.txt deep moved new own sub sym \nf\n711",
    );
    lap("run writer, diff, commit", &mut t);

    // The committed image's tree, exported from a container created from it.
    e.podman(&["create", "--name", "ex", "localhost/committed", "true"]);
    let export = e.p("export.tar");
    e.podman(&["export", "-o", &export, "ex"]);
    e.podman(&["rm", "ex"]);
    let export_tree = tree_lines(&read_tar(&export));
    assert_tree_has(
        &e.label,
        "export of the committed image",
        &export_tree,
        &[
            "data/new - 0644 0:0 size=2",
            "data/own - 4750 12:34 size=4",
            "data/sym l 0777 0:0 -> moved",
            "data/deep/f -",
            "bin/busybox - 0755 0:0",
        ],
        &[
            "data/hard ",
            "data/a ",
            "data/sub/b ",
            "opq",
            "bin/cat ",
            "bin/vi ",
            "data/deep/x",
        ],
    );
    lap("export", &mut t);

    // `podman image mount` (inside `podman unshare` when rootless): tar up what it shows.
    let mtar = e.p("mount.tar");
    e.host_sh(
        "podman",
        &format!(
        "m=$(podman image mount localhost/built) || exit 1; tar --numeric-owner --sort=name -C \"$m\" -cf {mtar} .; rc=$?; \
         podman image umount localhost/built >/dev/null || rc=1; exit $rc"
        ),
    );
    let mount_tree = tree_lines(&read_tar(&mtar));
    assert_tree_has(
        &e.label,
        "image mount of localhost/built",
        &mount_tree,
        &[
            "data/sub/c - 0644 0:0 size=4",
            "data/hard - 0600 0:0 size=14",
            "data/moved h 0600 0:0 link to data/hard",
            "opq/3 -",
            "data/deep/x/z d",
        ],
        &[
            "data/sub/b ",
            "data/a ",
            "opq/1 ",
            "opq/2 ",
            "bin/vi ",
            "data/deep/x/y",
        ],
    );
    lap("image mount", &mut t);

    e.expect(
        "--read-only",
        &[
            "run",
            "--rm",
            "--read-only",
            "localhost/bb",
            "sh",
            "-c",
            "(echo x > /f) 2>/dev/null && echo rw || echo ro-ok",
        ],
        "ro-ok",
    );
    // User namespaces: files of the image still show as 0:0 (and 12:34) inside.
    let (map, map_shown) = if rootless {
        ("0:1:1000", "0 1 1000")
    } else {
        ("0:100000:65536", "0 100000 65536")
    };
    e.expect(
        "--uidmap/--gidmap",
        &["run", "--rm", "--uidmap", map, "--gidmap", map, "localhost/built", "sh", "-c",
          "cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; stat -c %u:%g /data/moved /data/own /etc/passwd; \
           echo t > /data/sub/new && stat -c %u:%g /data/sub/new && cat /data/sub/new; rm /data/own && echo rm-ok"],
        &format!("{map_shown}\n0:0\n12:34\n0:0\n0:0\nt\nrm-ok"),
    );
    if let Some((uid, _)) = e.rootless {
        e.expect(
            "--userns=keep-id",
            &[
                "run",
                "--rm",
                "--userns=keep-id",
                "localhost/built",
                "sh",
                "-c",
                "id -u; stat -c %u:%g /data/moved /data/own; cat /data/sub/c",
            ],
            &format!("{uid}\n0:0\n12:34\nnew"),
        );
    }
    lap("read-only, userns", &mut t);

    // An overlay volume: writes inside must not reach the host directory.
    let vol = e.p("vol");
    fs::write(format!("{vol}/h"), "hostfile\n").unwrap();
    if let Some((uid, gid)) = e.rootless {
        sh_ok(&format!("chown {uid}:{gid} {vol}/h"));
    }
    e.expect(
        "-v SRC:DST:O",
        &["run", "--rm", "-v", &format!("{vol}:/mnt:O"), "localhost/bb", "sh", "-c",
          "cat /mnt/h; echo x > /mnt/new; cat /mnt/new; echo changed > /mnt/h; cat /mnt/h; rm /mnt/h; ls /mnt"],
        "hostfile\nx\nchanged\nnew",
    );
    assert_eq!(
        fs::read_to_string(format!("{vol}/h")).unwrap(),
        "hostfile\n",
        "[{}] :O volume changed the host file",
        e.label
    );
    assert!(
        !Path::new(&format!("{vol}/new")).exists(),
        "[{}] :O volume created a file on the host",
        e.label
    );
    lap("overlay volume", &mut t);

    let save = e.p("save.tar");
    e.podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        &save,
        "localhost/committed",
    ]);
    let layers = oci_layers(&save);
    assert_saved_whiteouts(&e.label, &layers);
    lap("save oci-archive", &mut t);

    e.podman(&["rm", "writer"]);
    e.assert_no_leftovers();
    lap("rm, rmi, leftovers", &mut t);
    eprintln!(
        "[{}] podman flow ok in {:.1?}: {}",
        e.label,
        t0.elapsed(),
        steps
            .iter()
            .map(|(n, d)| format!("{n} {d:.1?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Results {
        label: e.label.clone(),
        diff,
        export_tree,
        mount_tree,
        layers,
    }
}

pub(crate) fn podman_test(name: &str, rootless: bool) {
    if !engines_ready(name, &["podman", "runc", "newuidmap", "runuser"]) {
        return;
    }
    side_by_side(name, rootless, false, podman_flow);
}

#[test]
pub(crate) fn podman_rootful_matches_native_overlay() {
    podman_test("podman-rootful", false);
}

#[test]
pub(crate) fn podman_rootless_matches_native_overlay() {
    podman_test("podman-rootless", true);
}
