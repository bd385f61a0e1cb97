//! A small tar reader (ustar, GNU long names, PAX), for exports, layers and oci-archives.

use super::*;

#[derive(Clone, Debug)]
pub(crate) struct TarEntry {
    pub(crate) path: String,
    pub(crate) kind: char, // '-' file, 'd', 'l' symlink, 'h' hard link, 'c', 'b', 'p'
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) link: String,
    pub(crate) data: Vec<u8>,
}

impl TarEntry {
    /// One comparable line: everything but times.
    pub(crate) fn line(&self) -> String {
        let tail = match self.kind {
            '-' => format!("size={} fnv={:016x}", self.size, fnv(&self.data)),
            'l' => format!("-> {}", self.link),
            'h' => format!("link to {}", self.link),
            _ => String::new(),
        };
        format!(
            "{} {} {:04o} {}:{} {}",
            self.path, self.kind, self.mode, self.uid, self.gid, tail
        )
    }
}

pub(crate) fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub(crate) fn tar_num(f: &[u8]) -> u64 {
    if !f.is_empty() && f[0] & 0x80 != 0 {
        return f[1..]
            .iter()
            .fold((f[0] & 0x7f) as u64, |a, &b| (a << 8) | b as u64);
    }
    let s: String = f
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or(0)
}

pub(crate) fn tar_str(f: &[u8]) -> String {
    String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).into_owned()
}

pub(crate) fn norm_path(p: &str) -> String {
    let p = p
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    if p.is_empty() || p == "." {
        ".".into()
    } else {
        p.to_string()
    }
}

pub(crate) fn parse_tar(b: &[u8]) -> Vec<TarEntry> {
    let mut out = Vec::new();
    let mut off = 0;
    let (mut long_name, mut long_link): (Option<String>, Option<String>) = (None, None);
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    while off + 512 <= b.len() {
        let h = &b[off..off + 512];
        if h.iter().all(|&x| x == 0) {
            break;
        }
        let mut size = tar_num(&h[124..136]);
        if let Some(s) = pax.get("size") {
            size = s.parse().unwrap_or(size);
        }
        let flag = h[156];
        let dstart = off + 512;
        let dend = (dstart + size as usize).min(b.len());
        let data = &b[dstart..dend];
        off = dstart + (size as usize).div_ceil(512) * 512;
        match flag {
            b'x' => {
                let mut rest = data;
                while let Some(sp) = rest.iter().position(|&c| c == b' ') {
                    let len: usize = String::from_utf8_lossy(&rest[..sp]).parse().unwrap_or(0);
                    if len == 0 || len > rest.len() {
                        break;
                    }
                    let rec = String::from_utf8_lossy(&rest[sp + 1..len - 1]).into_owned();
                    if let Some((k, v)) = rec.split_once('=') {
                        pax.insert(k.to_string(), v.to_string());
                    }
                    rest = &rest[len..];
                }
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(tar_str(data));
                continue;
            }
            b'K' => {
                long_link = Some(tar_str(data));
                continue;
            }
            _ => {}
        }
        let mut name = tar_str(&h[0..100]);
        let prefix = tar_str(&h[345..500]);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let name = pax.remove("path").or(long_name.take()).unwrap_or(name);
        let link = pax
            .remove("linkpath")
            .or(long_link.take())
            .unwrap_or_else(|| tar_str(&h[157..257]));
        let kind = match flag {
            b'0' | 0 | b'7' => '-',
            b'1' => 'h',
            b'2' => 'l',
            b'3' => 'c',
            b'4' => 'b',
            b'5' => 'd',
            b'6' => 'p',
            other => other as char,
        };
        let uid = pax
            .remove("uid")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| tar_num(&h[108..116]));
        let gid = pax
            .remove("gid")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| tar_num(&h[116..124]));
        pax.clear();
        out.push(TarEntry {
            path: norm_path(&name),
            kind,
            mode: (tar_num(&h[100..108]) & 0o7777) as u32,
            uid,
            gid,
            size,
            link: if kind == 'h' { norm_path(&link) } else { link },
            data: data.to_vec(),
        });
    }
    out
}

pub(crate) fn read_tar(path: &str) -> Vec<TarEntry> {
    let b = fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    parse_tar(&decompress(b))
}

pub(crate) fn decompress(b: Vec<u8>) -> Vec<u8> {
    if b.len() > 2 && b[0] == 0x1f && b[1] == 0x8b {
        let tmp = std::env::temp_dir().join(format!(
            "ovlfuse-engines-gz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&tmp, &b).unwrap();
        let o = sh(&format!("gzip -dc < '{}'", tmp.display()));
        let _ = fs::remove_file(&tmp);
        assert!(o.status.success(), "gunzip layer: {}", show_output(&o));
        return o.stdout;
    }
    b
}

/// Sorted comparable lines of a file tree tar (export, image mount), without "." .
pub(crate) fn tree_lines(entries: &[TarEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .filter(|e| e.path != ".")
        .map(|e| e.line())
        .collect();
    v.sort();
    v
}

/// The layers of the single image in an oci-archive, in order (base first): for each,
/// its whiteout entries (`.wh.*` names) and all its entries as comparable lines.
pub(crate) struct Layer {
    pub(crate) whiteouts: Vec<String>,
    pub(crate) lines: Vec<String>,
    /// (path, comparable line) of every non-whiteout entry.
    pub(crate) entries: Vec<(String, String)>,
}

pub(crate) fn oci_layers(archive: &str) -> Vec<Layer> {
    let outer = read_tar(archive);
    let blob = |digest: &str| -> &TarEntry {
        let want = format!("blobs/{}", digest.replacen(':', "/", 1));
        outer
            .iter()
            .find(|e| e.path == want)
            .unwrap_or_else(|| panic!("{archive}: no {want}"))
    };
    let digests_after = |json: &str, key: &str| -> Vec<String> {
        let Some(i) = json.find(key) else {
            return vec![];
        };
        json[i..]
            .split("\"digest\"")
            .skip(1)
            .filter_map(|s| {
                let s = s
                    .trim_start()
                    .strip_prefix(':')?
                    .trim_start()
                    .strip_prefix('"')?;
                Some(s[..s.find('"')?].to_string())
            })
            .collect()
    };
    let index = outer
        .iter()
        .find(|e| e.path == "index.json")
        .expect("oci-archive has no index.json");
    let index = String::from_utf8_lossy(&index.data).into_owned();
    let manifests = digests_after(&index, "\"manifests\"");
    assert_eq!(manifests.len(), 1, "{archive}: index.json: {index}");
    let manifest = String::from_utf8_lossy(&blob(&manifests[0]).data).into_owned();
    let layers = digests_after(&manifest, "\"layers\"");
    assert!(
        !layers.is_empty(),
        "{archive}: no layers in manifest {manifest}"
    );
    layers
        .iter()
        .map(|d| {
            let entries = parse_tar(&decompress(blob(d).data.clone()));
            let mut whiteouts: Vec<String> = entries
                .iter()
                .filter(|e| e.path.rsplit('/').next().unwrap_or("").starts_with(".wh."))
                .map(|e| e.path.clone())
                .collect();
            whiteouts.sort();
            Layer {
                whiteouts,
                lines: tree_lines(&entries),
                entries: entries
                    .iter()
                    .filter(|e| {
                        e.path != "."
                            && !e.path.rsplit('/').next().unwrap_or("").starts_with(".wh.")
                    })
                    .map(|e| (e.path.clone(), e.line()))
                    .collect(),
            }
        })
        .collect()
}

pub(crate) fn show_layers(ls: &[Layer]) -> String {
    ls.iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "  layer {i}: {} entries, whiteouts {:?}",
                l.lines.len(),
                l.whiteouts
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
