//! Config parsing: arbitrary text as a `--config` TOML file, and as the
//! values of the enum-like options. Parsing fails with a message or yields
//! a configuration whose printed forms never contain the password.
#![no_main]

use apps::cli::Common;
use libfuzzer_sys::fuzz_target;
use stream_core::runtime::ProcessingGuarantee;
use stream_core::task::ErrorPolicy;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<ProcessingGuarantee>();
    let _ = text.parse::<ErrorPolicy>();
    let Ok(common) = Common::from_toml(&text) else {
        return;
    };
    let _ = common.team();
    let cfg = common.streams_config("team-1");
    if let Some(pw) = common.password.as_deref() {
        // A password long and odd enough not to occur by chance elsewhere.
        if pw.len() >= 12 && pw.chars().any(|c| c.is_ascii_punctuation()) {
            let shown = format!("{} {:?}", cfg.redacted(), cfg);
            let elsewhere = [&common.bootstrap_servers, &common.username, &common.application_id]
                .iter()
                .any(|f| f.as_deref().is_some_and(|f| f.contains(pw)));
            assert!(elsewhere || !shown.contains(pw), "password printed");
        }
    }
});
