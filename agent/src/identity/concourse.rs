//! Concourse's baggageclaim volumes. A volume's directory moves through three
//! states, by rename (worker/baggageclaim/volume/filesystem.go):
//! `<volumes>/init/<handle>` while it is created and initialised (the overlay is
//! mounted at `init/<handle>/volume`, `privileged.json` written beside it, and an
//! unprivileged volume's files chowned to the mapped ids: the copy-up storm),
//! then `live/<handle>`, then `dead/<handle>` while it is torn down (unmounted,
//! then removed). Overlay volumes have upper dir `<work>/overlays/<handle>`,
//! which no rename moves.
//!
//! The handle is the volume's identity in every state. privileged.json is read
//! from wherever the handle's directory is now: the state mountinfo showed first,
//! then the others, since a rename may land between reading mountinfo and
//! reading the file. mountinfo does not announce renames: the daemon checks
//! every second that the handle's directory is still where mountinfo said, and
//! re-reads it every second while a volume is in init/ without a readable
//! privileged.json (settling: the flag may not be written yet). Once the flag is
//! read the volume settles; the rename check alone catches the move to live/.

use super::{builtin, Identity, Layout, Subject};

const STATES: [&str; 3] = ["init", "live", "dead"];

pub(super) struct Concourse {
    volume: regex::Regex,
}

impl Concourse {
    pub fn new() -> Self {
        Concourse {
            volume: builtin(
                r"^(?P<volumes>/.*/volumes)/(?P<state>init|live|dead)/(?P<container_id>[^/]+)/volume$",
            ),
        }
    }
}

impl Layout for Concourse {
    fn identify(&self, s: &Subject) -> Option<Identity> {
        let c = self.volume.captures(&s.mountpoint)?;
        let (volumes, state, handle) = (&c["volumes"], &c["state"], &c["container_id"]);
        let mut i = Identity::new("concourse", handle, "");
        // baggageclaim writes the volume's privileged flag as a JSON boolean.
        let privileged = std::iter::once(state)
            .chain(STATES.into_iter().filter(|st| *st != state))
            .find_map(|st| s.read_json::<bool>(&format!("{volumes}/{st}/{handle}/privileged.json")));
        i.privileged = privileged.map(|p| p.to_string()).unwrap_or_default();
        // Settling only until the flag is read: then nothing more can appear, and
        // the rename check below covers the move to live/. A volume stuck in init/
        // does not cost a mountinfo read and a re-identification every second.
        i.settling = state == "init" && privileged.is_none();
        // Watched when the handle's directory is visible in some state: a
        // directory the agent cannot see at all (a wrong --path.rootfs) would
        // otherwise look renamed at every check. Visible elsewhere than mountinfo
        // says: renamed since the table was read (a census re-identifies from the
        // table it has), so the check finds it moved at once and the table is read
        // again.
        let dir = |st: &str| format!("{volumes}/{st}/{handle}");
        let visible = STATES.iter().any(|st| s.root.exists(&dir(st)));
        i.renamed_unless_exists = visible.then(|| s.path(&dir(state)));
        Some(i)
    }
}
