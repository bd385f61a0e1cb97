//! Running a flow twice, with ovlfuse and with the kernel overlay driver, and comparing
//! the two: file trees, layers' whiteouts, `podman diff`.

use super::*;

#[track_caller]
pub(crate) fn assert_same_lines(
    what: &str,
    a_label: &str,
    a: &[String],
    b_label: &str,
    b: &[String],
) {
    if a == b {
        return;
    }
    let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
    panic!(
        "{what} differs between {a_label} and {b_label}\n--- only in {a_label}:\n{}\n--- only in {b_label}:\n{}\n\
         --- full {a_label}:\n{}\n--- full {b_label}:\n{}",
        only_a.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
        only_b.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
        a.join("\n"),
        b.join("\n")
    );
}

pub(crate) fn parent_and_name(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

pub(crate) fn join(d: &str, n: &str) -> String {
    if d.is_empty() || d == "." {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

pub(crate) fn children<'a>(tree: &'a BTreeMap<String, String>, d: &str) -> Vec<&'a String> {
    let pre = if d.is_empty() {
        String::new()
    } else {
        format!("{d}/")
    };
    tree.keys()
        .filter(|k| k.starts_with(&pre) && !k[pre.len()..].contains('/') && k.len() > pre.len())
        .collect()
}

pub(crate) fn is_dir_line(l: &str) -> bool {
    l.split(' ').nth(1) == Some("d")
}

/// The paths a layer deletes from the tree below it. An opaque marker (`D/.wh..wh..opq`,
/// what the kernel driver's native diff writes) counts as deleting every old child of D
/// the layer does not bring back (recursively for directories it does bring back) — what
/// containers/storage's naive diff, used with a mount_program, writes as `.wh.NAME` files.
pub(crate) fn deleted_paths(below: &BTreeMap<String, String>, l: &Layer) -> Vec<String> {
    let new: BTreeMap<&str, &str> = l
        .entries
        .iter()
        .map(|(p, x)| (p.as_str(), x.as_str()))
        .collect();
    let mut del = Vec::new();
    fn expand(
        d: &str,
        below: &BTreeMap<String, String>,
        new: &BTreeMap<&str, &str>,
        del: &mut Vec<String>,
    ) {
        for c in children(below, d) {
            match new.get(c.as_str()) {
                None => del.push(c.clone()),
                Some(nl) if is_dir_line(nl) && is_dir_line(&below[c]) => expand(c, below, new, del),
                Some(_) => {}
            }
        }
    }
    for w in &l.whiteouts {
        let (d, n) = parent_and_name(w);
        if n == ".wh..wh..opq" {
            expand(d, below, &new, &mut del);
        } else {
            del.push(join(d, &n[4..]));
        }
    }
    del.sort();
    del.dedup();
    del
}

/// Applies a layer (whiteouts, opaque markers, entries) to a tree of comparable lines.
pub(crate) fn apply_layer(tree: &mut BTreeMap<String, String>, l: &Layer) {
    let remove_subtree = |tree: &mut BTreeMap<String, String>, p: &str, keep_self: bool| {
        let pre = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        tree.retain(|k, _| !(k.starts_with(&pre) || (!keep_self && k == p)));
    };
    for w in &l.whiteouts {
        let (d, n) = parent_and_name(w);
        if n == ".wh..wh..opq" {
            remove_subtree(tree, d, true);
        } else {
            remove_subtree(tree, &join(d, &n[4..]), false);
        }
    }
    for (p, line) in &l.entries {
        if let Some(old) = tree.get(p) {
            if is_dir_line(old) && !is_dir_line(line) {
                remove_subtree(tree, p, true);
            }
        }
        tree.insert(p.clone(), line.clone());
    }
}

/// Compares two images layer by layer by what they mean: the same number of layers, each
/// deleting the same paths (whatever the whiteout style), and the same file tree after
/// each layer is applied.
#[track_caller]
pub(crate) fn assert_same_layers(
    what: &str,
    a_label: &str,
    a: &[Layer],
    b_label: &str,
    b: &[Layer],
) {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: number of layers differs\n{a_label}:\n{}\n{b_label}:\n{}",
        show_layers(a),
        show_layers(b)
    );
    let (mut ta, mut tb) = (BTreeMap::new(), BTreeMap::new());
    for (i, (la, lb)) in a.iter().zip(b).enumerate() {
        let (da, db) = (deleted_paths(&ta, la), deleted_paths(&tb, lb));
        assert_eq!(
            da,
            db,
            "{what}: layer {i} deletes different paths ({a_label}: {da:?}, {b_label}: {db:?})\n{a_label}:\n{}\n{b_label}:\n{}",
            show_layers(a),
            show_layers(b)
        );
        apply_layer(&mut ta, la);
        apply_layer(&mut tb, lb);
        let (va, vb): (Vec<String>, Vec<String>) = (
            ta.values().cloned().collect(),
            tb.values().cloned().collect(),
        );
        assert_same_lines(
            &format!("{what}: tree after layer {i}"),
            a_label,
            &va,
            b_label,
            &vb,
        );
    }
}

/// `podman diff` with the kernel driver reports a directory that was deleted and made
/// again (an opaque directory) as `D P` plus `A P/...`; with a mount_program (naive diff)
/// as `C P` plus `D P/<old child>`. Rewrites the first form into the second, given the
/// paths of the image below.
pub(crate) fn normalize_diff(diff: &[String], below: &[String]) -> Vec<String> {
    let below_paths: Vec<&str> = below
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut out = Vec::new();
    for l in diff {
        if let Some(p) = l.strip_prefix("D /") {
            let recreated = diff
                .iter()
                .any(|x| x.starts_with(&format!("A /{p}/")) || x == &format!("A /{p}"));
            if recreated {
                out.push(format!("C /{p}"));
                let pre = format!("{p}/");
                for c in &below_paths {
                    if c.starts_with(&pre) && !c[pre.len()..].contains('/') {
                        let again = diff.iter().any(|x| x == &format!("A /{c}"));
                        if !again {
                            out.push(format!("D /{c}"));
                        }
                    }
                }
                continue;
            }
        }
        out.push(l.clone());
    }
    out.sort();
    out.dedup();
    out
}

/// What one flow produced, for comparison with the other driver.
pub(crate) struct Results {
    pub(crate) label: String,
    pub(crate) diff: Vec<String>,
    pub(crate) export_tree: Vec<String>,
    pub(crate) mount_tree: Vec<String>,
    pub(crate) layers: Vec<Layer>,
}

#[track_caller]
pub(crate) fn compare(a: &Results, b: &Results) {
    assert_same_lines(
        "`podman diff writer` (opaque directories normalized)",
        &a.label,
        &normalize_diff(&a.diff, &a.mount_tree),
        &b.label,
        &normalize_diff(&b.diff, &b.mount_tree),
    );
    assert_same_lines(
        "file tree of the committed image (podman export)",
        &a.label,
        &a.export_tree,
        &b.label,
        &b.export_tree,
    );
    assert_same_lines(
        "file tree of the mounted image",
        &a.label,
        &a.mount_tree,
        &b.label,
        &b.mount_tree,
    );
    assert_same_layers(
        "layers of the saved image",
        &a.label,
        &a.layers,
        &b.label,
        &b.layers,
    );
}

pub(crate) fn has_line(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| l.starts_with(prefix))
}

/// Asserts that `tree` has a line starting with each of `want` and none with any of `gone`.
#[track_caller]
pub(crate) fn assert_tree_has(
    label: &str,
    what: &str,
    tree: &[String],
    want: &[&str],
    gone: &[&str],
) {
    for w in want {
        assert!(
            has_line(tree, w),
            "[{label}] {what} has no {w:?}:\n{}",
            tree.join("\n")
        );
    }
    for g in gone {
        assert!(!has_line(tree, g), "[{label}] {what} still has {g:?}");
    }
}

/// The whiteouts every saved image of the flows must carry, in some layer.
pub(crate) const SAVED_WHITEOUTS: [&str; 5] = [
    "data/.wh.a",
    "bin/.wh.vi",
    "bin/.wh.cat",
    "data/.wh.hard",
    ".wh.opq",
];

#[track_caller]
pub(crate) fn assert_saved_whiteouts(label: &str, layers: &[Layer]) {
    let all: Vec<&String> = layers.iter().flat_map(|l| &l.whiteouts).collect();
    for w in SAVED_WHITEOUTS {
        assert!(
            all.iter().any(|x| *x == w),
            "[{label}] no whiteout {w} in the saved image:\n{}",
            show_layers(layers)
        );
    }
}

/// Runs `flow` with ovlfuse as mount_program and with the native driver, side by side
/// (separate graphroots, so the two are independent), and compares what they produced.
pub(crate) fn side_by_side(
    name: &str,
    rootless: bool,
    buildah: bool,
    flow: fn(&Eng, &Inputs) -> Results,
) {
    let user = rootless.then(rootless_user);
    let td = TestDir::new(name);
    let inp = make_inputs(&td);
    let ovl = Eng::new(&td.root, Driver::Ovlfuse, user, buildah);
    let nat = Eng::new(&td.root, Driver::Native, user, buildah);
    let (r_ovl, r_nat) = std::thread::scope(|s| {
        let h = s.spawn(|| flow(&nat, &inp));
        let a = flow(&ovl, &inp);
        (a, h.join())
    });
    let r_nat = r_nat.unwrap_or_else(|p| std::panic::resume_unwind(p));
    compare(&r_ovl, &r_nat);
}
