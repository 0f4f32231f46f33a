//! Jib-style layers for a Maven build assembled without a Dockerfile: dependencies, resources
//! and classes each in their own layer, bottom (changes least) to top (changes most), so a code
//! change re-pushes only the small classes layer.
//!
//! - dependencies: the jars in `target/dependency` (what `mvn dependency:copy-dependencies`
//!   writes) or `target/lib` → `/app/libs/`
//! - resources: everything in `target/classes` that is not a `.class` file → `/app/classes/`
//! - classes: the `.class` files in `target/classes` → `/app/classes/`
//!
//! Every file gets one fixed mtime (1 s past the epoch, as Jib does), not the commit time: a
//! layer whose files did not change must keep its digest from one commit to the next, or every
//! build would upload every layer again. The config's `created` still says the commit time.
//!
//! The entrypoint is `java -cp /app/classes:/app/libs/* <Main-Class>`, the main class read from
//! the manifest of the jar Maven built (`target/*.jar`), so the app starts as `java -jar` would.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use registry_sync::{LayerEntry, LayerSpec};

pub const CLASSES_DIR: &str = "/app/classes";
pub const LIBS_DIR: &str = "/app/libs";
/// The mtime of every file in these layers.
pub const FILE_MTIME: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JavaLayersError {
    #[error("{0} does not exist (did the compile step run mvn package?)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a jar Kiln can read: {reason}")]
    BadJar { path: PathBuf, reason: String },
    #[error("the manifest of {0} names no Main-Class (set <mainClass> in maven-jar-plugin's manifest configuration)")]
    NoMainClass(PathBuf),
}

/// The layers and entrypoint of a Maven app.
#[derive(Debug)]
pub struct JavaLayout {
    /// Non-empty layers, bottom to top.
    pub layers: Vec<LayerSpec>,
    pub entrypoint: Vec<String>,
}

/// Lays out the Maven build output under `target` (the app's `target/` directory).
pub fn maven_layout(target: &Path, jar: &Path) -> Result<JavaLayout, JavaLayersError> {
    let classes = target.join("classes");
    if !classes.is_dir() {
        return Err(JavaLayersError::Missing(classes));
    }
    let main_class = main_class(jar)?;
    let mut deps = Vec::new();
    for dir in [target.join("dependency"), target.join("lib")] {
        if dir.is_dir() {
            for path in sorted_files(&dir)? {
                if path.extension().is_some_and(|e| e == "jar") {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    deps.push(LayerEntry::new(&path, format!("{LIBS_DIR}/{name}")));
                }
            }
            break;
        }
    }
    let (mut resources, mut code) = (Vec::new(), Vec::new());
    walk(&classes, &classes, &mut |path, rel| {
        let entry = LayerEntry::new(path, format!("{CLASSES_DIR}/{rel}"));
        if rel.ends_with(".class") {
            code.push(entry)
        } else {
            resources.push(entry)
        }
    })?;
    let classpath = if deps.is_empty() { CLASSES_DIR.to_string() } else { format!("{CLASSES_DIR}:{LIBS_DIR}/*") };
    let layers = [deps, resources, code]
        .into_iter()
        .filter(|entries| !entries.is_empty())
        .map(|entries| LayerSpec::new(entries).with_mtime(FILE_MTIME))
        .collect();
    Ok(JavaLayout { layers, entrypoint: vec!["java".into(), "-cp".into(), classpath, main_class] })
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, JavaLayersError> {
    let io = |source| JavaLayersError::Io { path: dir.to_path_buf(), source };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// Every file under `dir`, with its path relative to `root` (`/`-separated).
fn walk(root: &Path, dir: &Path, found: &mut dyn FnMut(&Path, &str)) -> Result<(), JavaLayersError> {
    for path in sorted_files(dir)? {
        let meta = std::fs::symlink_metadata(&path).map_err(|source| JavaLayersError::Io { path: path.clone(), source })?;
        if meta.is_dir() {
            walk(root, &path, found)?;
        } else {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            found(&path, &rel);
        }
    }
    Ok(())
}

/// `Main-Class` from the jar's `META-INF/MANIFEST.MF`.
pub fn main_class(jar: &Path) -> Result<String, JavaLayersError> {
    let manifest = read_zip_entry(jar, "META-INF/MANIFEST.MF")?;
    let text = String::from_utf8_lossy(&manifest);
    // Manifest lines wrap at 72 bytes; a continuation line starts with one space.
    let mut unwrapped: Vec<String> = Vec::new();
    for line in text.lines() {
        match (line.strip_prefix(' '), unwrapped.last_mut()) {
            (Some(more), Some(last)) => last.push_str(more),
            _ => unwrapped.push(line.to_string()),
        }
    }
    unwrapped
        .iter()
        .find_map(|l| l.strip_prefix("Main-Class:").map(|v| v.trim().to_string()))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| JavaLayersError::NoMainClass(jar.to_path_buf()))
}

/// One entry of a zip file, found through the central directory (the local headers' sizes may
/// be deferred to data descriptors). Only stored and deflated entries, which is what jars hold.
fn read_zip_entry(jar: &Path, wanted: &str) -> Result<Vec<u8>, JavaLayersError> {
    let bad = |reason: &str| JavaLayersError::BadJar { path: jar.to_path_buf(), reason: reason.into() };
    let data = std::fs::read(jar).map_err(|source| JavaLayersError::Io { path: jar.to_path_buf(), source })?;
    let u16_at = |i: usize| data.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| data.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    // The end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB.
    let lowest = data.len().saturating_sub(22 + 0xffff);
    let eocd = (lowest..=data.len().saturating_sub(22))
        .rev()
        .find(|&i| data[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or_else(|| bad("no end of central directory"))?;
    let entries = u16_at(eocd + 10).ok_or_else(|| bad("truncated"))?;
    let mut at = u32_at(eocd + 16).ok_or_else(|| bad("truncated"))?;
    for _ in 0..entries {
        if u32_at(at) != Some(0x0201_4b50) {
            return Err(bad("broken central directory"));
        }
        let field = |off: usize| u16_at(at + off).ok_or_else(|| bad("truncated"));
        let (method, name_len, extra_len, comment_len) = (field(10)?, field(28)?, field(30)?, field(32)?);
        let size = u32_at(at + 20).ok_or_else(|| bad("truncated"))?;
        let local = u32_at(at + 42).ok_or_else(|| bad("truncated"))?;
        let name = data.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("truncated"))?;
        if name == wanted.as_bytes() {
            if u32_at(local) != Some(0x0403_4b50) {
                return Err(bad("broken local header"));
            }
            let start = local + 30 + u16_at(local + 26).unwrap_or(0) + u16_at(local + 28).unwrap_or(0);
            let raw = data.get(start..start + size).ok_or_else(|| bad("entry runs past the end"))?;
            return match method {
                0 => Ok(raw.to_vec()),
                8 => {
                    let mut out = Vec::new();
                    flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out).map_err(|e| bad(&e.to_string()))?;
                    Ok(out)
                }
                _ => Err(bad("unsupported compression method")),
            };
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    Err(bad(&format!("no {wanted}")))
}
