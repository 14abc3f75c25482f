//! Config parsing: arbitrary text as a `--config` TOML file, and as the
//! values of the enum-like options. Parsing fails with a message or yields
//! a configuration whose printed forms do not depend on the password.
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
    // What the configuration prints must not depend on the password: the
    // same file with another password prints exactly the same.
    let Ok(mut other) = Common::from_toml(&text) else {
        panic!("the same text parsed once and failed the second time");
    };
    other.password = common.password.as_ref().map(|p| format!("{p}-other"));
    let shown = |c: &Common| {
        let cfg = c.streams_config("team-1");
        format!("{} {:?}", cfg.redacted(), cfg)
    };
    assert_eq!(shown(&common), shown(&other), "the password changes what is printed");
});
