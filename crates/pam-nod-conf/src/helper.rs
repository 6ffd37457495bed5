//! The helper binary a `helper=` argument names, checked as the module runs it.

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

/// Opens the helper by fd walk from `/` (root-owned, not writable by group or others, no
/// symlinks) and checks that root can execute it as an ELF binary. The returned fd is the one
/// `pam_nod.so` executes, so what was checked is what runs. The error says what to fix.
pub fn open_helper(path: &Path) -> Result<File, String> {
    let file = nod_fscheck::open_file(path, nod_fscheck::Rule::root_file())
        .map_err(|e| format!("refusing helper: {e}"))?;
    let mode = file
        .metadata()
        .map_err(|e| format!("refusing helper {}: fstat: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "refusing helper {}: it is not executable (mode {:04o}) — run `chmod 755 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    // The fd is close-on-exec, which fexecve accepts for ELF binaries only (a script's
    // interpreter would be handed a /dev/fd path that is already closed). Say so clearly.
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_err() || magic != *b"\x7fELF" {
        return Err(format!(
            "refusing helper {}: it is not an ELF executable — point helper= at the \
             nod-helper binary, not a script",
            path.display()
        ));
    }
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_or_missing_helper_is_refused_with_the_path() {
        let e = open_helper(Path::new("nod-helper")).unwrap_err();
        assert!(e.contains("nod-helper"), "{e}");
        let e = open_helper(Path::new("/nonexistent/nod-helper")).unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
    }
}
