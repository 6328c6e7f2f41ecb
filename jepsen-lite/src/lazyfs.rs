//! lazyfs: a filesystem that loses what was not synced, for the `power` nemesis (after Jepsen's
//! LazyFS). Each node's data directory is a FUSE mount over a backing directory; at a power cut
//! every byte written but not yet fsynced is discarded, and every directory change not yet
//! made durable is undone.
//!
//! What it models, exactly:
//! - **File data** reaches the backing file only on `fsync`/`fdatasync` of that file; until
//!   then writes and truncations are kept in memory (in order) and served to readers. Closing a
//!   file syncs nothing (POSIX does not promise it). `sync_file_range` is not offered by FUSE; a
//!   program falls back to `fdatasync`.
//! - **Directory changes** (create, mkdir, link, rename, unlink, rmdir) are applied to the
//!   backing directory at once, and journalled until the directory that holds the changed name
//!   (for a rename, the new name's) is fsynced. At a power cut a random prefix of the journal
//!   survives (as a journalling filesystem commits metadata in order) and the rest is undone,
//!   newest first: a file created and synced whose directory never was may be gone; a rename
//!   not yet synced may be rolled back, or kept with its file's unsynced data lost (the empty
//!   file after a crash); an unlinked file may come back.
//! - **Unlinked files stay readable** while open, as on a real filesystem: an unlinked file is
//!   moved aside (to a trash directory beside the backing one), not deleted, and reads and writes
//!   through a handle opened before keep working. It is deleted once it is closed and its unlink
//!   is durable.
//! - **A power cut** (`LazyMount::power_cut`, after the node using it was killed) drops every
//!   pending write and truncation and undoes every journalled directory change; the next reader
//!   sees the backing files. Torn pages (part of an unsynced write reaching the disk) are not
//!   modelled.
//! - File contents are never cached by the kernel (`FOPEN_DIRECT_IO`, zero attribute and entry
//!   timeouts), so nothing lost here survives in the page cache. Locks are the kernel's own.
//!
//! Needs `/dev/fuse` and root (the mount is a plain `mount(2)`). This module must not know what
//! the files are; it only keeps or drops bytes and names.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    consts::FOPEN_DIRECT_IO, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// Nothing is cached by the kernel: every lookup and attribute comes from here.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// One unsynced change to a file, in the order it was made.
#[derive(Debug, Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    Truncate(u64),
}

/// One directory change not yet durable, with what undoes it.
#[derive(Debug, Clone)]
enum DirChange {
    /// A name made (create, mkdir, link): undone by removing it.
    Made { rel: PathBuf },
    /// A name removed (unlink, rmdir); an unlinked file waits in the trash.
    Removed { rel: PathBuf, trash: Option<PathBuf> },
    /// `from` renamed to `to`, replacing the file now in the trash, if any.
    Renamed { from: PathBuf, to: PathBuf, replaced: Option<PathBuf> },
}

impl DirChange {
    /// The directory whose fsync makes this change durable.
    fn dir(&self) -> PathBuf {
        let name = match self {
            DirChange::Made { rel } | DirChange::Removed { rel, .. } => rel,
            DirChange::Renamed { to, .. } => to,
        };
        name.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// What the filesystem holds: the backing directory, inode numbers, unsynced changes.
struct State {
    backing: PathBuf,
    /// Unlinked files wait here (beside `backing`) while open or until their unlink is durable.
    trash: PathBuf,
    next_trash: u64,
    /// Paths relative to `backing`, or absolute ones in the trash for unlinked files.
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    pending: HashMap<u64, Vec<Pending>>,
    /// Directory changes not yet made durable, oldest first.
    journal: Vec<DirChange>,
    /// Open handles per inode.
    open: HashMap<u64, u32>,
    next_fh: u64,
    /// Bytes dropped by power cuts so far.
    lost_bytes: u64,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl State {
    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(ino) = self.inos.get(rel) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, rel.to_path_buf());
        ino
    }

    fn rel(&self, ino: u64) -> Result<PathBuf, i32> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.rel(parent)?.join(name))
    }

    /// Forgets a path (and, for a directory, everything under it).
    fn forget_path(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self.inos.keys().filter(|p| p.starts_with(rel)).cloned().collect();
        for path in gone {
            if let Some(ino) = self.inos.remove(&path) {
                self.paths.remove(&ino);
                self.pending.remove(&ino);
            }
        }
    }

    fn size_with_pending(&self, ino: u64, backing_len: u64) -> u64 {
        self.pending.get(&ino).map_or(backing_len, |ops| {
            ops.iter().fold(backing_len, |size, op| match op {
                Pending::Write(offset, data) => size.max(offset + data.len() as u64),
                Pending::Truncate(len) => *len,
            })
        })
    }

    fn attr(&mut self, ino: u64) -> Result<FileAttr, i32> {
        let rel = self.rel(ino)?;
        let meta = std::fs::symlink_metadata(self.full(&rel)).map_err(|e| errno(&e))?;
        let kind = if meta.is_dir() {
            FileType::Directory
        } else if meta.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = if kind == FileType::RegularFile { self.size_with_pending(ino, meta.len()) } else { meta.len() };
        let time = |secs: i64, nanos: i64| {
            SystemTime::UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
        };
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>, i32> {
        let rel = self.rel(ino)?;
        let file = File::open(self.full(&rel)).map_err(|e| errno(&e))?;
        let backing_len = file.metadata().map_err(|e| errno(&e))?.len();
        let mut buf = vec![0u8; size];
        if offset < backing_len {
            let want = ((backing_len - offset) as usize).min(size);
            file.read_exact_at(&mut buf[..want], offset).map_err(|e| errno(&e))?;
        }
        let end = offset + size as u64;
        for op in self.pending.get(&ino).into_iter().flatten() {
            match op {
                Pending::Truncate(len) => {
                    // Bytes past the new end read as zeros if written again later.
                    if *len < end {
                        let from = len.saturating_sub(offset) as usize;
                        buf[from.min(size)..].fill(0);
                    }
                }
                Pending::Write(at, data) => {
                    let (from, to) = ((*at).max(offset), (at + data.len() as u64).min(end));
                    if from < to {
                        let (src, dst) = ((from - at) as usize, (from - offset) as usize);
                        let n = (to - from) as usize;
                        buf[dst..dst + n].copy_from_slice(&data[src..src + n]);
                    }
                }
            }
        }
        let size_now = self.size_with_pending(ino, backing_len);
        buf.truncate(size_now.saturating_sub(offset).min(size as u64) as usize);
        Ok(buf)
    }

    fn write(&mut self, ino: u64, offset: u64, data: &[u8]) {
        let ops = self.pending.entry(ino).or_default();
        if let Some(Pending::Write(at, last)) = ops.last_mut() {
            if *at + last.len() as u64 == offset {
                last.extend_from_slice(data);
                return;
            }
        }
        ops.push(Pending::Write(offset, data.to_vec()));
    }

    /// Writes a file's pending changes to its backing file and syncs it.
    fn sync(&mut self, ino: u64, data_only: bool) -> Result<(), i32> {
        let Some(ops) = self.pending.remove(&ino) else { return Ok(()) };
        let rel = self.rel(ino)?;
        let file = OpenOptions::new().write(true).open(self.full(&rel)).map_err(|e| errno(&e))?;
        for op in &ops {
            match op {
                Pending::Write(at, data) => file.write_all_at(data, *at).map_err(|e| errno(&e))?,
                Pending::Truncate(len) => file.set_len(*len).map_err(|e| errno(&e))?,
            }
        }
        if data_only { file.sync_data() } else { file.sync_all() }.map_err(|e| errno(&e))
    }

    /// Moves the file at `rel` to the trash (its inode, if known, follows it there); answers
    /// where it went.
    fn move_to_trash(&mut self, rel: &Path) -> Result<PathBuf, i32> {
        std::fs::create_dir_all(&self.trash).map_err(|e| errno(&e))?;
        self.next_trash += 1;
        let trash = self.trash.join(self.next_trash.to_string());
        std::fs::rename(self.full(rel), &trash).map_err(|e| errno(&e))?;
        if let Some(ino) = self.inos.remove(rel) {
            self.paths.insert(ino, trash.clone());
        }
        Ok(trash)
    }

    /// Deletes the trash files nothing needs any more: not open, their removal durable.
    fn empty_trash(&mut self) {
        let needed: std::collections::HashSet<PathBuf> = self
            .journal
            .iter()
            .filter_map(|c| match c {
                DirChange::Removed { trash, .. } => trash.clone(),
                DirChange::Renamed { replaced, .. } => replaced.clone(),
                DirChange::Made { .. } => None,
            })
            .chain(self.open.keys().filter_map(|ino| self.paths.get(ino).filter(|p| p.is_absolute()).cloned()))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.trash) else { return };
        for entry in entries.flatten() {
            if !needed.contains(&entry.path()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The directory `dir` was fsynced: the changes of names in it are durable.
    fn sync_dir(&mut self, dir: &Path) {
        self.journal.retain(|c| c.dir() != dir);
        self.empty_trash();
    }

    /// The power cut: pending writes dropped, and the journalled directory changes after the
    /// first `kept` undone (metadata reaches the disk in order, as a journalling filesystem
    /// commits it: a crash keeps some prefix of it, so a rename may survive though the file's
    /// data did not).
    fn power_cut(&mut self, chance: u64) -> u64 {
        let lost: u64 = self
            .pending
            .values()
            .flatten()
            .map(|op| match op {
                Pending::Write(_, data) => data.len() as u64,
                Pending::Truncate(_) => 0,
            })
            .sum();
        self.pending.clear();
        self.lost_bytes += lost;
        // Undo the directory changes not made durable past the prefix that reached the disk,
        // newest first (best effort: a change that cannot be undone, say over a name a later
        // durable change took, is left).
        let mut journal = std::mem::take(&mut self.journal);
        let kept = (chance % (journal.len() as u64 + 1)) as usize;
        for change in journal.split_off(kept).into_iter().rev() {
            let undone = match &change {
                DirChange::Made { rel } => {
                    let full = self.full(rel);
                    if full.is_dir() {
                        std::fs::remove_dir_all(&full)
                    } else {
                        std::fs::remove_file(&full)
                    }
                }
                DirChange::Removed { rel, trash: Some(trash) } => std::fs::rename(trash, self.full(rel)),
                DirChange::Removed { rel, trash: None } => std::fs::create_dir(self.full(rel)),
                DirChange::Renamed { from, to, replaced } => std::fs::rename(self.full(to), self.full(from))
                    .and_then(|()| replaced.as_ref().map_or(Ok(()), |r| std::fs::rename(r, self.full(to)))),
            };
            if let Err(e) = undone {
                eprintln!("jepsen-lite: lazyfs: cannot undo {change:?} at a power cut: {e}");
            }
        }
        // The processes using the mount are dead: names are looked up afresh.
        self.paths.retain(|ino, _| *ino == ROOT);
        self.inos.retain(|_, ino| *ino == ROOT);
        self.open.clear();
        self.empty_trash();
        lost
    }
}

/// The FUSE side.
struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl LazyFs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unlink (a file goes to the trash: an open handle still reads it, and a power cut before
    /// its directory is synced brings it back) or rmdir; journalled either way.
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|rel| {
            let trash = if dir {
                std::fs::remove_dir(state.full(&rel)).map_err(|e| errno(&e))?;
                state.forget_path(&rel);
                None
            } else {
                Some(state.move_to_trash(&rel)?)
            };
            state.journal.push(DirChange::Removed { rel, trash });
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|rel| {
            std::fs::symlink_metadata(state.full(&rel)).map_err(|e| errno(&e))?;
            let ino = state.ino_for(&rel);
            state.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.rel(ino)?;
            if let Some(mode) = mode {
                let permissions = std::fs::Permissions::from_mode(mode & 0o7777);
                std::fs::set_permissions(state.full(&rel), permissions).map_err(|e| errno(&e))?;
            }
            if let Some(size) = size {
                state.pending.entry(ino).or_default().push(Pending::Truncate(size));
            }
            state.attr(ino)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state.child(parent, name).and_then(|rel| {
            let full = state.full(&rel);
            std::fs::create_dir(&full).map_err(|e| errno(&e))?;
            let _ = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask & 0o7777));
            state.journal.push(DirChange::Made { rel: rel.clone() });
            let ino = state.ino_for(&rel);
            state.attr(ino)
        });
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    /// A hard link (how a file is made visible only once whole, without replacing anything).
    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = (|| {
            let from = state.rel(ino)?;
            let to = state.child(newparent, newname)?;
            if state.pending.contains_key(&ino) {
                // Two names would share one set of pending changes; nothing here needs it.
                return Err(libc::EBUSY);
            }
            std::fs::hard_link(state.full(&from), state.full(&to)).map_err(|e| errno(&e))?;
            state.journal.push(DirChange::Made { rel: to.clone() });
            let new_ino = state.ino_for(&to);
            state.attr(new_ino)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let result = (|| {
            let from = state.child(parent, name)?;
            let to = state.child(newparent, newname)?;
            if flags & libc::RENAME_NOREPLACE != 0 && state.full(&to).exists() {
                return Err(libc::EEXIST);
            }
            if flags & !libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EINVAL);
            }
            // The replaced file (if any) goes to the trash: a cut before the rename is durable
            // brings it back.
            let replaced = if state.full(&to).is_file() { Some(state.move_to_trash(&to)?) } else { None };
            std::fs::rename(state.full(&from), state.full(&to)).map_err(|e| errno(&e))?;
            state.journal.push(DirChange::Renamed { from: from.clone(), to: to.clone(), replaced });
            // The renamed one (and what is under it) moves, keeping its inode numbers and
            // pending changes.
            let moved: Vec<(PathBuf, u64)> =
                state.inos.iter().filter(|(p, _)| p.starts_with(&from)).map(|(p, i)| (p.clone(), *i)).collect();
            for (path, ino) in moved {
                let rest = path.strip_prefix(&from).unwrap_or(Path::new(""));
                // (`join("")` would add a trailing slash.)
                let new_path = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
                state.inos.remove(&path);
                state.inos.insert(new_path.clone(), ino);
                state.paths.insert(ino, new_path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut state = self.state();
        if state.rel(ino).is_err() {
            return reply.error(libc::ENOENT);
        }
        if flags & libc::O_TRUNC != 0 {
            state.pending.entry(ino).or_default().push(Pending::Truncate(0));
        }
        *state.open.entry(ino).or_default() += 1;
        state.next_fh += 1;
        reply.opened(state.next_fh, FOPEN_DIRECT_IO);
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Some(count) = state.open.get_mut(&ino) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.open.remove(&ino);
                if state.paths.get(&ino).is_some_and(|p| p.is_absolute()) {
                    // The last handle of an unlinked file: what it held is gone unless synced.
                    state.empty_trash();
                }
            }
        }
        reply.ok();
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.child(parent, name)?;
            let full = state.full(&rel);
            let existed = full.exists();
            if existed && flags & libc::O_EXCL != 0 {
                return Err(libc::EEXIST);
            }
            if !existed {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & !umask & 0o7777)
                    .open(&full)
                    .map_err(|e| errno(&e))?;
                state.journal.push(DirChange::Made { rel: rel.clone() });
            }
            let ino = state.ino_for(&rel);
            if existed && flags & libc::O_TRUNC != 0 {
                state.pending.entry(ino).or_default().push(Pending::Truncate(0));
            }
            *state.open.entry(ino).or_default() += 1;
            state.next_fh += 1;
            Ok((state.attr(ino)?, state.next_fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, 0, fh, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.state().read(ino, offset.max(0) as u64, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        if state.rel(ino).is_err() {
            return reply.error(libc::ENOENT);
        }
        state.write(ino, offset.max(0) as u64, data);
        // O_SYNC / O_DSYNC writes are durable when they return.
        if flags & (libc::O_SYNC | libc::O_DSYNC) != 0 {
            if let Err(e) = state.sync(ino, flags & libc::O_SYNC == 0) {
                return reply.error(e);
            }
        }
        reply.written(data.len() as u32);
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        // Closing a file syncs nothing.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, datasync: bool, reply: ReplyEmpty) {
        match self.state().sync(ino, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let mut state = self.state();
        let result = (|| {
            let rel = state.rel(ino)?;
            let mut entries: BTreeMap<std::ffi::OsString, FileType> = BTreeMap::new();
            for entry in std::fs::read_dir(state.full(&rel)).map_err(|e| errno(&e))? {
                let entry = entry.map_err(|e| errno(&e))?;
                let kind = match entry.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                entries.insert(entry.file_name(), kind);
            }
            let mut listed: Vec<(u64, FileType, std::ffi::OsString)> =
                vec![(ino, FileType::Directory, ".".into()), (ino, FileType::Directory, "..".into())];
            for (name, kind) in entries {
                let child = state.ino_for(&rel.join(&name));
                listed.push((child, kind, name));
            }
            Ok(listed)
        })();
        match result {
            Ok(listed) => {
                for (i, (child, kind, name)) in listed.into_iter().enumerate().skip(offset.max(0) as usize) {
                    if reply.add(child, (i + 1) as i64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.state();
        match state.rel(ino) {
            Ok(dir) => {
                state.sync_dir(&dir);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let backing = self.state().backing.clone();
        match nix_statvfs(&backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Preallocation is an optimisation; programs carry on without it.
        reply.error(libc::EOPNOTSUPP);
    }
}

fn nix_statvfs(path: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: a NUL-terminated path and a zeroed out-parameter of the right type.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

/// A mounted lazyfs; dropping it unmounts.
pub struct LazyMount {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    _session: fuser::BackgroundSession,
}

impl LazyMount {
    /// Mounts lazyfs at `mountpoint` (made if missing) over `backing` (made if missing).
    pub fn mount(mountpoint: &Path, backing: &Path) -> io::Result<LazyMount> {
        std::fs::create_dir_all(mountpoint)?;
        std::fs::create_dir_all(backing)?;
        let backing = backing.canonicalize()?;
        let mut trash_name = backing.file_name().unwrap_or_default().to_os_string();
        trash_name.push(".trash");
        let trash = backing.with_file_name(trash_name);
        let _ = std::fs::remove_dir_all(&trash);
        let mut state = State {
            backing,
            trash,
            next_trash: 0,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: ROOT + 1,
            pending: HashMap::new(),
            journal: Vec::new(),
            open: HashMap::new(),
            next_fh: 0,
            lost_bytes: 0,
        };
        state.paths.insert(ROOT, PathBuf::new());
        state.inos.insert(PathBuf::new(), ROOT);
        let state = Arc::new(Mutex::new(state));
        let options = [MountOption::FSName("lazyfs".into()), MountOption::RW];
        let session = fuser::spawn_mount2(LazyFs { state: state.clone() }, mountpoint, &options)?;
        Ok(LazyMount { state, mountpoint: mountpoint.to_path_buf(), _session: session })
    }

    /// The power cut: every unsynced byte is dropped, and of the directory changes not made
    /// durable a prefix chosen by `chance` survives (0: none). Answers the bytes dropped.
    pub fn power_cut(&self, chance: u64) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).power_cut(chance)
    }

    /// Bytes dropped by power cuts so far.
    pub fn lost_bytes(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).lost_bytes
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

/// Whether lazyfs can run here: `/dev/fuse` and root.
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    Path::new("/dev/fuse").exists() && unsafe { libc::geteuid() } == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Fsyncs directory `dir`.
    fn sync_dir(dir: &Path) {
        File::open(dir).unwrap().sync_all().unwrap();
    }

    #[test]
    fn unsynced_bytes_and_unsynced_directory_changes_are_lost_at_a_power_cut() {
        if !available() {
            eprintln!("skipped: lazyfs needs /dev/fuse and root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount = LazyMount::mount(&dir.path().join("m"), &dir.path().join("b")).unwrap();
        let root = mount.mountpoint().to_path_buf();
        let path = root.join("wal");
        let mut file = OpenOptions::new().create_new(true).write(true).open(&path).unwrap();
        file.write_all(b"synced;").unwrap();
        file.sync_all().unwrap();
        file.write_all(b"not synced").unwrap();
        drop(file);
        let mut text = String::new();
        File::open(&path).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "synced;not synced", "readers see unsynced writes before the cut");
        sync_dir(&root);
        // A rename not followed by a sync of its directory is rolled back at the cut.
        std::fs::rename(&path, root.join("wal2")).unwrap();
        assert_eq!(mount.power_cut(0), 10);
        assert!(!root.join("wal2").exists(), "the unsynced rename is undone");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "synced;", "only what was synced survives");
        // A synced rename stays.
        std::fs::rename(&path, root.join("wal2")).unwrap();
        sync_dir(&root);
        mount.power_cut(0);
        assert_eq!(std::fs::read_to_string(root.join("wal2")).unwrap(), "synced;");
        // A truncation is a change like a write: lost unless synced.
        let file = OpenOptions::new().write(true).open(root.join("wal2")).unwrap();
        file.set_len(2).unwrap();
        assert_eq!(std::fs::read(root.join("wal2")).unwrap(), b"sy");
        drop(file);
        mount.power_cut(0);
        assert_eq!(std::fs::read(root.join("wal2")).unwrap(), b"synced;");
        // A file created, written and synced, whose directory was not: gone after the cut.
        let mut file = File::create(root.join("new")).unwrap();
        file.write_all(b"x").unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::create_dir(root.join("d")).unwrap();
        mount.power_cut(0);
        assert!(!root.join("new").exists() && !root.join("d").exists(), "unsynced creations are undone");
        // An unlinked file stays readable through a handle opened before; an unsynced unlink
        // is undone at the cut.
        let mut open = File::open(root.join("wal2")).unwrap();
        std::fs::remove_file(root.join("wal2")).unwrap();
        assert!(!root.join("wal2").exists());
        let mut text = String::new();
        open.read_to_string(&mut text).unwrap();
        assert_eq!(text, "synced;", "an open, unlinked file reads as before");
        drop(open);
        mount.power_cut(0);
        assert_eq!(std::fs::read(root.join("wal2")).unwrap(), b"synced;", "the unsynced unlink is undone");
        // A file made whole under a temporary name, then linked into place (and the directory
        // synced): there after the cut.
        let mut file = OpenOptions::new().create_new(true).write(true).open(root.join("key.tmp")).unwrap();
        file.write_all(b"secret").unwrap();
        file.sync_all().unwrap();
        drop(file);
        std::fs::hard_link(root.join("key.tmp"), root.join("key")).unwrap();
        std::fs::remove_file(root.join("key.tmp")).unwrap();
        sync_dir(&root);
        mount.power_cut(0);
        assert_eq!(std::fs::read(root.join("key")).unwrap(), b"secret");
        assert!(!root.join("key.tmp").exists());
        let names: Vec<String> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"key".to_string()) && names.contains(&"wal2".to_string()), "{names:?}");
    }
}
