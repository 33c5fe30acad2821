//! Keeping the host objects across a daemon restart (docs/IOMMUFD.md, "Restart").
//!
//! With a state directory the backend writes the ids of its iommufd objects to
//! `DIR/iommufd-objects` whenever they change. The kernel objects live as long as the iommufd
//! does: when the launcher keeps its own copy of the fd (`fd-socket`), a daemon that dies leaves
//! them in place and the devices keep translating. The next daemon, handed the same iommufd,
//! adopts the devices (no new mock device, no second VFIO bind) and remembers the old objects;
//! once the journaled device state is resumed (or dropped) it moves each device to its new HWPT
//! with one replace (atomic in the kernel) and destroys the old objects.
//!
//! The file is opened at start-up, before the seccomp filters; afterwards only ftruncate(2) and
//! write(2) touch it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use log::{error, warn};
use serde_json::{json, Value};

use super::ids::{destroy, DevId, EndpointId, HwptId, IoasId, Iommufd, MockId, ObjId};

/// The file's name inside the state directory.
pub const OBJECTS_FILE: &str = "iommufd-objects";

/// A host device as the file records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SavedDevice {
    Mock {
        stdev: MockId,
        idev: DevId,
    },
    Vfio {
        dev_id: DevId,
    },
    /// A VFIO device the VMM bound (no device id here), on the cdev file the launcher keeps.
    Vmm,
}

/// An endpoint's device and the HWPT it was attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedEndpoint {
    pub endpoint: EndpointId,
    pub dev: SavedDevice,
    pub hwpt: HwptId,
}

/// What a previous process left in the iommufd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    /// Its blocked IOAS: the object that shows whether this is the same iommufd.
    pub blocked: IoasId,
    pub endpoints: Vec<SavedEndpoint>,
    /// Every other object, in the order they can be destroyed (HWPTs and the objects on them
    /// before the IOASes under them).
    pub objects: Vec<ObjId>,
    /// The IOVA ranges every host device can map and the IOVA alignment (the adopted devices
    /// are not on the new blocked IOAS, which cannot tell them).
    pub allowed: Vec<(u64, u64)>,
    pub iova_alignment: u64,
}

impl Saved {
    pub fn to_json(&self) -> Value {
        let eps: Vec<_> = self
            .endpoints
            .iter()
            .map(|e| match e.dev {
                SavedDevice::Mock { stdev, idev } => json!({"endpoint": e.endpoint,
                    "kind": "mock", "stdev_id": stdev, "dev_id": idev, "hwpt": e.hwpt}),
                SavedDevice::Vfio { dev_id } => json!({"endpoint": e.endpoint,
                    "kind": "vfio", "dev_id": dev_id, "hwpt": e.hwpt}),
                SavedDevice::Vmm => json!({"endpoint": e.endpoint,
                    "kind": "vmm", "hwpt": e.hwpt}),
            })
            .collect();
        json!({"version": 1, "blocked_ioas": self.blocked, "endpoints": eps,
               "objects": self.objects, "allowed_iovas": self.allowed,
               "iova_alignment": self.iova_alignment})
    }

    pub fn from_json(v: &Value) -> Option<Saved> {
        let u = |v: &Value, k: &str| v.get(k)?.as_u64().and_then(|x| u32::try_from(x).ok());
        if v.get("version")?.as_u64()? != 1 {
            return None;
        }
        let mut endpoints = Vec::new();
        for e in v.get("endpoints")?.as_array()? {
            let dev = match e.get("kind")?.as_str()? {
                "mock" => SavedDevice::Mock {
                    stdev: MockId(u(e, "stdev_id")?),
                    idev: DevId(u(e, "dev_id")?),
                },
                "vfio" => SavedDevice::Vfio {
                    dev_id: DevId(u(e, "dev_id")?),
                },
                "vmm" => SavedDevice::Vmm,
                _ => return None,
            };
            endpoints.push(SavedEndpoint {
                endpoint: EndpointId(u(e, "endpoint")?),
                dev,
                hwpt: HwptId(u(e, "hwpt")?),
            });
        }
        let objects = v
            .get("objects")?
            .as_array()?
            .iter()
            .map(|o| o.as_u64().and_then(|x| u32::try_from(x).ok()).map(ObjId))
            .collect::<Option<Vec<ObjId>>>()?;
        let allowed = v
            .get("allowed_iovas")?
            .as_array()?
            .iter()
            .map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_u64()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Saved {
            blocked: IoasId(u(v, "blocked_ioas")?),
            endpoints,
            objects,
            allowed,
            iova_alignment: v.get("iova_alignment")?.as_u64()?,
        })
    }
}

/// The open objects file.
#[derive(Debug)]
pub struct ObjectsFile {
    file: File,
    path: PathBuf,
    /// What was written last (nothing is written when it has not changed).
    last: String,
    broken: bool,
}

impl ObjectsFile {
    /// Open (creating it) `DIR/iommufd-objects`; return it with what a previous process saved.
    pub fn open(dir: &Path) -> std::io::Result<(ObjectsFile, Option<Saved>)> {
        let path = dir.join(OBJECTS_FILE);
        let mut file = crate::journal::open_state_file(dir, &path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let saved = if text.trim().is_empty() {
            None
        } else {
            let s = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| Saved::from_json(&v));
            if s.is_none() {
                warn!("{}: not a valid objects file: ignored", path.display());
            }
            s
        };
        Ok((
            ObjectsFile {
                file,
                path,
                last: text,
                broken: false,
            },
            saved,
        ))
    }

    /// Replace the content with `v` (nothing written if it has not changed).
    pub fn write(&mut self, v: Option<&Value>) {
        let text = v.map(|v| format!("{v}\n")).unwrap_or_default();
        if text == self.last {
            return;
        }
        let r = self
            .file
            .set_len(0)
            .and_then(|()| self.file.write_all(text.as_bytes()));
        match r {
            Ok(()) => {
                self.last = text;
                self.broken = false;
            }
            Err(e) => {
                if !self.broken {
                    error!(
                        "{}: {e}; a restarted daemon could not adopt the host objects",
                        self.path.display()
                    );
                }
                self.broken = true;
            }
        }
    }
}

/// The objects file as the backend holds it: rewritten whenever the objects change and, when
/// the backend goes (it is its last field, so after every object), left with what a successor
/// must adopt ([`Persist::on_exit`]) or emptied.
#[derive(Debug)]
pub struct Persist {
    file: Option<ObjectsFile>,
    on_exit: Option<Value>,
}

impl Persist {
    /// Keep `file` (None: no state directory, nothing is written).
    pub fn new(file: Option<ObjectsFile>) -> Persist {
        Persist {
            file,
            on_exit: None,
        }
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Write `v` now (nothing written if it has not changed).
    pub fn write(&mut self, v: &Value) {
        if let Some(f) = self.file.as_mut() {
            f.write(Some(v));
        }
    }

    /// What the file says once the backend has gone: `v`, or nothing.
    pub fn on_exit(&mut self, v: Option<Value>) {
        self.on_exit = v;
    }
}

impl Drop for Persist {
    fn drop(&mut self) {
        if let Some(f) = self.file.as_mut() {
            f.write(self.on_exit.as_ref());
        }
    }
}

/// A previous process's objects, taken over at start-up, until the journaled state is resumed
/// or dropped. Its devices are adopted by their endpoints (`device::Endpoint::adopted`).
#[derive(Debug)]
pub struct Adoption {
    /// What the objects file said (written back if this process stops before finishing).
    pub saved: Saved,
    /// The previous process's objects, destroyed at the end, in order (never by this process
    /// otherwise: a successor may still adopt them).
    pub old: Vec<ObjId>,
}

impl Adoption {
    pub fn new(saved: Saved) -> Adoption {
        Adoption {
            old: saved.objects.clone(),
            saved,
        }
    }

    /// Destroy the previous process's objects; returns how many went.
    pub fn release(&self, fd: &Iommufd) -> usize {
        let mut gone = 0;
        for &id in &self.old {
            match destroy(fd, id) {
                Ok(()) => gone += 1,
                Err(e) => warn!("previous process's object {id}: {e}"),
            }
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_objects_round_trip() {
        let s = Saved {
            blocked: IoasId(1),
            endpoints: vec![
                SavedEndpoint {
                    endpoint: EndpointId(1),
                    dev: SavedDevice::Mock {
                        stdev: MockId(3),
                        idev: DevId(4),
                    },
                    hwpt: HwptId(5),
                },
                SavedEndpoint {
                    endpoint: EndpointId(2),
                    dev: SavedDevice::Vfio { dev_id: DevId(6) },
                    hwpt: HwptId(7),
                },
                SavedEndpoint {
                    endpoint: EndpointId(0x28),
                    dev: SavedDevice::Vmm,
                    hwpt: HwptId(10),
                },
            ],
            objects: [9, 8, 2, 1].map(ObjId).to_vec(),
            allowed: vec![(0x100_0000, u64::MAX)],
            iova_alignment: 4096,
        };
        assert_eq!(Saved::from_json(&s.to_json()), Some(s));
        assert_eq!(Saved::from_json(&json!({"version": 2})), None);
    }

    #[test]
    fn the_file_is_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("vui-adopt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut f, saved) = ObjectsFile::open(&dir).expect("open");
        assert_eq!(saved, None);
        let s = Saved {
            blocked: IoasId(1),
            endpoints: vec![],
            objects: vec![ObjId(2), ObjId(1)],
            allowed: vec![],
            iova_alignment: 1,
        };
        f.write(Some(&s.to_json()));
        f.write(Some(&s.to_json()));
        drop(f);
        let (mut f, saved) = ObjectsFile::open(&dir).expect("open");
        assert_eq!(saved, Some(s));
        f.write(None);
        drop(f);
        let (_, saved) = ObjectsFile::open(&dir).expect("open");
        assert_eq!(saved, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
