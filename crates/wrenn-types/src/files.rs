//! File shapes (contract §8), identical on the agent and the public API.

use serde::{Deserialize, Serialize};

/// The kind of a directory entry. Anything else (sockets, fifos, devices) is reported as `File`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    /// Regular file (or any non-directory, non-symlink kind).
    File,
    /// Directory.
    Directory,
    /// Symbolic link (only when its target cannot be resolved; otherwise the target's type).
    Symlink,
}

/// One directory entry (contract §8.8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Base name.
    pub name: String,
    /// Absolute path, built from the requested path (not symlink-resolved).
    pub path: String,
    /// Kind; for a symlink, the target's kind.
    #[serde(rename = "type")]
    pub file_type: Option<FileType>,
    /// Size in bytes (lstat).
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `ls`-style permissions, `L` first for symlinks.
    pub permissions: String,
    /// Owner name (or the numeric uid when it has no name).
    pub owner: String,
    /// Group name (or the numeric gid when it has no name).
    pub group: String,
    /// Modification time, unix seconds.
    pub modified_at: i64,
    /// Target for symlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// `{"path": "..."}`: read, remove, mkdir, stat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathRequest {
    /// Absolute path inside the capsule.
    #[serde(default)]
    pub path: String,
}

/// `{"path": "...", "depth": N}`: list. Depth 0 means 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListRequest {
    /// Absolute directory path.
    #[serde(default)]
    pub path: String,
    /// Levels to recurse; 0 and 1 both mean the directory's own entries.
    #[serde(default, deserialize_with = "crate::integral::deserialize")]
    pub depth: u32,
}

/// `{"entries": [...]}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListResponse {
    /// Entries, never null.
    pub entries: Vec<FileEntry>,
}

/// `{"entry": {...}}`: mkdir's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryResponse {
    /// The created directory.
    pub entry: FileEntry,
}
