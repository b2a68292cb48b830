//! Bytes that failed verification, moved aside with their position and reason instead of being
//! dropped. Each report is a pair of files in `quarantine/`: `<name>.bad` (the bytes, or the
//! moved file) and `<name>.txt` (`key=value` lines: source, offset, len, space, reason).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::disk::{write_file_atomic, Disk};

/// One quarantined region or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineReport {
    /// The WAL or segment file the bytes came from.
    pub source: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// The space the bytes probably belonged to, when it could be read.
    pub space: Option<String>,
    pub reason: String,
    /// Where the bytes are now.
    pub saved_to: PathBuf,
}

/// The node's quarantine directory and its reports (including earlier runs').
pub struct Quarantine {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    reports: Mutex<Vec<QuarantineReport>>,
}

impl Quarantine {
    pub fn new(disk: Arc<dyn Disk>, dir: PathBuf) -> Self {
        let mut reports = Vec::new();
        if let Ok(names) = disk.list_dir(&dir) {
            let mut names: Vec<String> =
                names.into_iter().filter(|n| n.ends_with(".txt")).collect();
            names.sort();
            for n in names {
                if let Ok(text) = disk.read(&dir.join(&n)) {
                    if let Some(r) = parse_report(&String::from_utf8_lossy(&text)) {
                        reports.push(r);
                    }
                }
            }
        }
        Self {
            disk,
            dir,
            reports: Mutex::new(reports),
        }
    }

    pub fn reports(&self) -> Vec<QuarantineReport> {
        self.reports.lock().clone()
    }

    pub fn count_for_space(&self, space: &str) -> usize {
        self.reports
            .lock()
            .iter()
            .filter(|r| r.space.as_deref() == Some(space))
            .count()
    }

    /// Copies a corrupt region of `source` aside. Failure to save is logged, never fatal: the
    /// bytes are still where they were.
    pub fn save_region(
        &self,
        source: &Path,
        offset: u64,
        bytes: &[u8],
        space: Option<String>,
        reason: &str,
    ) {
        // The region stays in its WAL file until a checkpoint removes the file; a later
        // restart finds it again and must not report it twice.
        if self
            .reports
            .lock()
            .iter()
            .any(|r| r.source == source && r.offset == offset)
        {
            tracing::warn!(source = %source.display(), offset, "corrupt WAL region (already quarantined) skipped");
            return;
        }
        let base = format!("{}@{offset}", file_name(source));
        let saved_to = self.dir.join(format!("{base}.bad"));
        let report = QuarantineReport {
            source: source.to_path_buf(),
            offset,
            len: bytes.len() as u64,
            space,
            reason: reason.to_string(),
            saved_to: saved_to.clone(),
        };
        let result = self
            .disk
            .create_dir_all(&self.dir)
            .and_then(|()| write_file_atomic(&*self.disk, &saved_to, bytes))
            .and_then(|()| self.write_report(&base, &report));
        self.finish(report, result);
    }

    /// Moves a whole corrupt file aside.
    pub fn quarantine_file(&self, source: &Path, reason: &str) {
        let parent = source
            .parent()
            .and_then(|p| p.file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let base = format!("{parent}-{}", file_name(source));
        let saved_to = self.dir.join(format!("{base}.bad"));
        let len = self.disk.file_len(source).unwrap_or(0);
        let report = QuarantineReport {
            source: source.to_path_buf(),
            offset: 0,
            len,
            space: Some(parent),
            reason: reason.to_string(),
            saved_to: saved_to.clone(),
        };
        let result = self
            .disk
            .create_dir_all(&self.dir)
            .and_then(|()| self.disk.rename(source, &saved_to))
            .and_then(|()| self.disk.sync_dir(&self.dir))
            .and_then(|()| {
                self.disk
                    .sync_dir(source.parent().unwrap_or(Path::new(".")))
            })
            .and_then(|()| self.write_report(&base, &report));
        self.finish(report, result);
    }

    fn write_report(&self, base: &str, r: &QuarantineReport) -> std::io::Result<()> {
        let text = format!(
            "source={}\noffset={}\nlen={}\nspace={}\nsaved_to={}\nreason={}\n",
            r.source.display(),
            r.offset,
            r.len,
            r.space.as_deref().unwrap_or(""),
            r.saved_to.display(),
            r.reason.replace('\n', " ")
        );
        write_file_atomic(
            &*self.disk,
            &self.dir.join(format!("{base}.txt")),
            text.as_bytes(),
        )
    }

    fn finish(&self, report: QuarantineReport, result: std::io::Result<()>) {
        match result {
            Ok(()) => tracing::error!(
                source = %report.source.display(),
                offset = report.offset,
                len = report.len,
                space = report.space.as_deref().unwrap_or("?"),
                reason = %report.reason,
                saved_to = %report.saved_to.display(),
                "corrupt data quarantined"
            ),
            Err(e) => tracing::error!(
                source = %report.source.display(),
                offset = report.offset,
                error = %e,
                "corrupt data found; saving it to quarantine failed"
            ),
        }
        self.reports.lock().push(report);
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parse_report(text: &str) -> Option<QuarantineReport> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let space = get("space").filter(|s| !s.is_empty()).map(str::to_string);
    Some(QuarantineReport {
        source: PathBuf::from(get("source")?),
        offset: get("offset")?.parse().ok()?,
        len: get("len")?.parse().ok()?,
        space,
        reason: get("reason")?.to_string(),
        saved_to: PathBuf::from(get("saved_to").unwrap_or("")),
    })
}
