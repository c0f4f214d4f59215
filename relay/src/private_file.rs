//! Files only the relay's user may read: its tokens, its private key, and the first admin
//! token when there is no terminal to show it on.

use std::io::{self, Write};
use std::path::Path;

/// Writes `contents` to `path` whole: to a temporary file beside it (mode 0600), synced, then
/// renamed over `path`, so that a crash leaves the old file or the new one, never half of one.
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}
