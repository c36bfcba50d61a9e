//! Output staging: the engine writes into a hidden staging directory and moves
//! files into place only after every check passed, the report last. A failed run
//! removes its staging directory, so nothing that looks complete is left behind.

use crate::error::{Context, Result};
use proto::report::FileSum;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Staging {
    pub dir: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Staging> {
        std::fs::create_dir_all(out).ctx(|| format!("creating {}", out.display()))?;
        let dir = out.join(format!(".staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).ctx(|| format!("creating {}", dir.display()))?;
        Ok(Staging { dir, out: out.to_path_buf(), committed: false })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Size and sha256 of each named staged file.
    pub fn checksums(&self, names: &[String]) -> Result<Vec<FileSum>> {
        names.iter().map(|n| sum_file(&self.path(n), n)).collect()
    }

    /// Moves every staged file into the output directory, `last` at the very end.
    pub fn commit(mut self, last: &str) -> Result<()> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .ctx(|| "listing staging".into())?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n != last)
            .collect();
        names.sort();
        names.push(last.to_string());
        for n in names {
            std::fs::rename(self.dir.join(&n), self.out.join(&n)).ctx(|| format!("publishing {n}"))?;
        }
        self.committed = true;
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // DRAKE_KEEP_STAGING=1 keeps a failed run's files for debugging.
        if !self.committed && std::env::var_os("DRAKE_KEEP_STAGING").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn sum_file(path: &Path, name: &str) -> Result<FileSum> {
    let mut f = std::fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).ctx(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileSum { path: name.to_string(), size, sha256: hex::encode(h.finalize()) })
}

/// Writes JSON with a trailing newline.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).ctx(|| "serializing".into())?;
    text.push('\n');
    std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))
}
