//! Files both ends keep secrets in: written atomically, mode 0600 from the first byte.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `data` to `path` atomically (temp file + rename in the same directory) with mode
/// 0600; the temp file is created 0600, so the secret is never readable by others.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, data, 0o600)
}

/// Like [`write_private`] for files that may be world-readable (certificates, configs).
pub fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, data, 0o644)
}

fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // A fresh, randomly named temp file opened with O_CREAT|O_EXCL (tempfile's default): a
    // file or symlink planted at a guessable name cannot be written through, and the file
    // is 0600 from its creation whatever `mode` ends up being.
    let mut tmp = tempfile::Builder::new().prefix(".flotilla-").suffix(".tmp").tempfile_in(dir)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Creates `dir` (and parents) and makes it 0700: the state directories hold keys.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_0600_and_replace_the_old_file_atomically() {
        let dir = tempfile::tempdir().expect("test io");
        let p = dir.path().join("key.pem");
        write_private(&p, b"one").expect("test io");
        assert_eq!(mode_of(&p).expect("test io"), 0o600);
        write_public(&p, b"two").expect("test io");
        assert_eq!(std::fs::read(&p).expect("test io"), b"two");
        assert_eq!(mode_of(&p).expect("test io"), 0o644);
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).expect("test io").map(|e| e.expect("test io").file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("key.pem")], "no temp file is left behind");
    }

    #[test]
    fn a_symlink_planted_at_a_guessable_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().expect("test io");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").expect("test io");
        // The name a writer with a predictable temp file would use (this process's id).
        let planted = dir.path().join(format!(".token.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("test io");
        let p = dir.path().join("token");
        std::os::unix::fs::symlink(&victim, &p).expect("test io");
        write_private(&p, b"secret").expect("test io");
        assert_eq!(std::fs::read(&victim).expect("test io"), b"untouched");
        assert!(!std::fs::symlink_metadata(&p).expect("test io").file_type().is_symlink());
        assert_eq!(std::fs::read(&p).expect("test io"), b"secret");
    }
}
