//! Inputs: the busybox root filesystem and the build context.

use super::*;

pub(crate) const CONTAINERFILE: &str = "FROM localhost/bb
RUN rm /data/a && rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/c
RUN echo appended >> /data/keep && chown 12:34 /data/own && chmod 4750 /data/own
RUN mkdir -p /opq && echo x > /opq/1 && echo y > /opq/2
RUN rm -rf /opq && mkdir /opq && echo z > /opq/3 && rm -rf /data/deep/x && mkdir -p /data/deep/x/z
RUN rm /bin/vi && mv /data/keep /data/moved && chmod 600 /data/moved && ln /data/moved /data/hard && ln -s moved /data/sym && chmod 700 /data/deep
COPY added.txt /data/added.txt
";
/// Instructions after FROM: each must be a cache hit on the rebuild.
pub(crate) const BUILD_STEPS: usize = 6;

/// What the built image must show (run inside it with busybox sh).
pub(crate) const BUILT_CHECK: &str =
    "ls /data | tr '\\n' ' '; echo; ls /data/sub | tr '\\n' ' '; echo; \
    cat /data/sub/c; cat /data/moved | tr '\\n' '+'; echo; ls /opq; ls /data/deep/x; \
    test -e /bin/vi || echo novi; stat -c '%a %h %u:%g' /data/moved /data/own; \
    readlink /data/sym; stat -c %a /data/deep";
pub(crate) const BUILT_WANT: &str =
    "added.txt deep hard moved own sub sym \nc \nnew\nkeep+appended+\n3\nz\nnovi\n\
    600 2 0:0\n4750 1 12:34\nmoved\n700";

/// The mutation container `writer` makes before `podman diff` / `commit`. (Not named
/// `c1`: `podman diff` looks the name up as an image first, and an image ID starting with
/// the hex digits `c1` made it diff that image instead, now and then.)
pub(crate) const C1_SCRIPT: &str =
    "rm /data/hard; rm -rf /opq; echo w > /data/new; echo more >> /data/moved; \
    mkdir /newdir; rm /bin/cat; chmod 711 /data/sub; rm -rf /data/deep; mkdir /data/deep; \
    echo fresh > /data/deep/f";

pub(crate) struct Inputs {
    pub(crate) rootfs_tar: String,
    pub(crate) ctx: String,
    pub(crate) containerfile: String,
}

/// Builds rootfs/ (static busybox, applet links, /etc/passwd+group, /data files),
/// rootfs.tar and the build context, readable by everyone.
pub(crate) fn make_inputs(td: &TestDir) -> Inputs {
    let base = td.root.join("inputs");
    let rootfs = base.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "var/tmp",
        "root",
        "run",
        "data/sub",
        "data/deep/x/y",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(rootfs.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let list = sh_ok("/bin/busybox --list");
    let mut n = 0;
    for applet in list.split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            n += 1;
        }
    }
    assert!(n > 100, "busybox --list gave only {n} applets");
    for a in [
        "sh", "ls", "cat", "vi", "stat", "readlink", "tr", "rm", "mkdir", "ln", "chmod", "chown",
        "id", "tar",
    ] {
        assert!(
            rootfs.join("bin").join(a).exists(),
            "busybox has no {a} applet"
        );
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::write(rootfs.join("data/a"), "aaaaaa\n").unwrap();
    fs::write(rootfs.join("data/keep"), "keep\n").unwrap();
    fs::write(rootfs.join("data/own"), "own\n").unwrap();
    fs::write(rootfs.join("data/sub/b"), "bbbbbb\n").unwrap();
    fs::write(rootfs.join("data/deep/x/y/f"), "deep\n").unwrap();
    let tar = base.join("rootfs.tar");
    sh_ok(&format!(
        "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
        rootfs.display(),
        tar.display()
    ));
    let ctx = base.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
    fs::write(ctx.join("added.txt"), "added\n").unwrap();
    sh_ok(&format!("chmod -R a+rX '{}'", base.display()));
    Inputs {
        rootfs_tar: tar.to_string_lossy().into_owned(),
        containerfile: ctx.join("Containerfile").to_string_lossy().into_owned(),
        ctx: ctx.to_string_lossy().into_owned(),
    }
}
