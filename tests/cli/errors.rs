//! Errors before mounting: every bad option or layer fails with a message that names it,
//! and nothing is mounted.

use super::*;

#[test]
fn error_misspelt_option() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-misspelt");
    let st = simple_stack(&sc);
    let opts = format!(
        "lowerdri={},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdri"]);
    let opts = format!("{},frobnicate=7", st.full_opts());
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["frobnicate"]);
}

#[test]
fn error_missing_lower_layer() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-missing");
    let st = simple_stack(&sc);
    let missing = sc.path("no-such-layer");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&missing),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["no-such-layer"],
    );
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&sc.path("no-such-upper")),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["no-such-upper"],
    );
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&st.upper),
        s(&sc.path("no-such-work"))
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["no-such-work"]);
}

#[test]
fn error_layer_is_not_a_directory() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-notdir");
    let st = simple_stack(&sc);
    let file = sc.path("plainfile");
    fs::write(&file, b"x").unwrap();
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&file),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["plainfile"]);
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&file),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["plainfile"]);
}

#[test]
fn error_empty_or_missing_lowerdir() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-emptylower");
    let st = simple_stack(&sc);
    let opts = format!(
        "lowerdir=,upperdir={},workdir={}",
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdir"]);
    let opts = format!("upperdir={},workdir={}", s(&st.upper), s(&st.work));
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdir"]);
}

#[test]
fn error_upperdir_without_workdir() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-nowork");
    let st = simple_stack(&sc);
    let opts = format!("{},upperdir={}", st.lowerdir_opt(), s(&st.upper));
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["workdir"]);
}

#[test]
fn error_workdir_on_other_filesystem() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-workfs");
    let st = simple_stack(&sc);
    let t = sc.dir("tmpfs");
    let _tg = mount_tmpfs(&t);
    let wk = t.join("work");
    fs::create_dir(&wk).unwrap();
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&st.upper),
        s(&wk)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["workdir", "tmpfs/work", "file system", "filesystem"],
    );
}

#[test]
fn error_overlapping_layers() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-overlap");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let l0 = s(&st.lowers[0]);
    let up = s(&st.upper);
    let wk = s(&st.work);
    let mnt = s(&st.mnt);
    // Each case: (description, options). Directories are made after the LowerCheck would
    // see them, so make them first in scratch places outside the lowers.
    let up_in_work = sc.dir("work2/up");
    let work2 = sc.path("work2");
    let lower_in_upper = sc.dir("upper2/lower");
    let upper2 = sc.path("upper2");
    let work_in_upper = sc.dir("upper3/work");
    let upper3 = sc.path("upper3");
    let cases: Vec<(&str, String)> = vec![
        (
            "lower inside upper",
            format!(
                "lowerdir={},upperdir={},workdir={wk}",
                s(&lower_in_upper),
                s(&upper2)
            ),
        ),
        (
            "workdir inside upper",
            format!(
                "lowerdir={l0},upperdir={},workdir={}",
                s(&upper3),
                s(&work_in_upper)
            ),
        ),
        (
            "upper inside workdir",
            format!(
                "lowerdir={l0},upperdir={},workdir={}",
                s(&up_in_work),
                s(&work2)
            ),
        ),
        (
            "workdir == upperdir",
            format!("lowerdir={l0},upperdir={up},workdir={up}"),
        ),
        (
            "upper == lower",
            format!("lowerdir={l0},upperdir={l0},workdir={wk}"),
        ),
    ];
    for (what, opts) in &cases {
        eprintln!("case: {what}: -o {opts}");
        expect_mount_failure(
            &sc,
            &["-o", opts, &mnt],
            &st.mnt,
            &["upperdir", "workdir", "lowerdir", "overlap", "inside"],
        );
    }
    lc.verify();
}

/// A lower layer inside the upper is refused, as the kernel overlay refuses it (the other
/// way round is allowed: `a_lower_layer_holding_the_upper_is_mounted_...` in semantics).
#[test]
fn error_a_lower_inside_the_upper() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-lower-in-upper");
    let st = Stack::new(&sc, 1);
    build(&st.upper, &[E::File("inner/a", b"a")]);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s(&st.upper.join("inner")),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["lowerdir", "overlap", "inside", "upper/inner"],
    );
    assert_eq!(fs::read(st.upper.join("inner/a")).unwrap(), b"a");
}

#[test]
fn error_missing_mountpoint() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-nomnt");
    let st = simple_stack(&sc);
    let mnt = sc.path("no-such-mountpoint");
    expect_mount_failure(
        &sc,
        &["-o", &st.full_opts(), &s(&mnt)],
        &mnt,
        &["no-such-mountpoint"],
    );
}
