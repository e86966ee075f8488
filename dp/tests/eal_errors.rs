//! EAL init errors are values, not panics (its own process: one EAL per
//! process, and a failed init cannot be retried).
#![cfg(dpdk)]

use dpuproxy_dp::{Eal, Error};

#[test]
fn bad_arguments_are_an_error_and_final() {
    let prefix = format!("--file-prefix=dperr{}", std::process::id());
    let base = [
        "-l",
        "1",
        "--no-huge",
        "-m",
        "128",
        "--no-shconf",
        prefix.as_str(),
        "--no-telemetry",
        "--no-pci",
    ];
    let with = |extra: &str| -> Vec<String> {
        base.iter()
            .copied()
            .chain([extra])
            .map(String::from)
            .collect()
    };

    match Eal::init(with("--definitely-not-an-eal-option")) {
        Err(Error::EalInit {
            code, reason, args, ..
        }) => {
            assert_eq!(code, 22, "EINVAL");
            assert!(reason.contains("invalid EAL arguments"), "{reason}");
            assert!(args.contains("--definitely-not-an-eal-option"));
        }
        other => panic!("expected EalInit, got {other:?}"),
    }
    assert!(matches!(
        Eal::init(["bad\0arg"]),
        Err(Error::BadArgument(_))
    ));

    // DPDK cannot retry an init in the same process: said plainly.
    assert!(matches!(
        Eal::init(with("--vdev=net_null0")),
        Err(Error::AlreadyInitialized)
    ));
}
