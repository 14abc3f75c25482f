//! Small records the runtime keeps beside the stores in the application's
//! state directory (`source-topic-ids.json`, `transactional-ids`): each
//! written whole, first beside the record and then renamed over it, so a
//! crash leaves the old record or the new one, never half of one.

use std::path::Path;

use super::error::RuntimeError;

/// Replaces the record at `path` with `bytes`; `what` names it in the
/// error.
pub(crate) fn replace(path: &Path, bytes: &[u8], what: &'static str) -> Result<(), RuntimeError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| RuntimeError::LocalFile {
            what,
            path: path.display().to_string(),
            source: e,
        })
}
