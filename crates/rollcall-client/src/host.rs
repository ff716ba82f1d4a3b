//! The host's name, the default machine id.
//!
//! Read without `unsafe` or extra dependencies, in this order:
//! `/etc/hostname`, `/proc/sys/kernel/hostname` (Linux, also where
//! `/etc/hostname` is missing, as in some containers), the `HOSTNAME`
//! environment variable. The first candidate that is a valid machine id
//! (1–128 characters of `[A-Za-z0-9._:-]`) wins; failing all, `localhost`.

use rollcall_core::MachineId;

/// The machine id used when none is given: the host's name, or `localhost`.
pub fn default_machine_id() -> MachineId {
    host_name().unwrap_or_else(|| MachineId::parse("localhost").expect("valid machine id"))
}

/// The host's name, if it can be found and is a valid machine id.
pub fn host_name() -> Option<MachineId> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    pick_host_name([
        read("/etc/hostname"),
        read("/proc/sys/kernel/hostname"),
        std::env::var("HOSTNAME").ok(),
    ])
}

/// The first candidate whose first meaningful line (not blank, not a `#`
/// comment) is a valid machine id.
pub fn pick_host_name(candidates: impl IntoIterator<Item = Option<String>>) -> Option<MachineId> {
    candidates.into_iter().flatten().find_map(|text| {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))?;
        MachineId::parse(line).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn picks_the_first_valid_candidate() {
        assert_eq!(
            pick_host_name([s("host-a\n"), s("host-b"), s("host-c")]).map(String::from),
            Some("host-a".into())
        );
        assert_eq!(
            pick_host_name([None, s("# set by installer\n\n  host-b.example  \n")])
                .map(String::from),
            Some("host-b.example".into())
        );
        assert_eq!(
            pick_host_name([s(""), s("bad name"), s("host-c")]).map(String::from),
            Some("host-c".into())
        );
        assert_eq!(pick_host_name([None, None, s("\n")]), None);
    }

    #[test]
    fn the_default_is_always_a_valid_machine_id() {
        // Whatever this host is called, the result parses.
        let id = default_machine_id();
        assert!(MachineId::parse(id.as_str()).is_ok());
    }
}
