//! The guest driver's uAPI header (guest/linux/patches, patch 0001: the lines it adds to
//! include/uapi/linux/virtio_iommu.h) and the device model agree byte for byte.
//!
//! The test compiles the patch's definitions with gcc on top of the system's
//! <linux/virtio_iommu.h> (the standard device), then:
//! * compares every struct's size and every field's offset with the model's wire structs;
//! * has C fill ATTACH_TABLE (INTEL_VTD_S1) and INVALIDATE requests through the header's
//!   structs and runs the bytes through the model's decoders;
//! * has C parse the model's PROBE properties with the header's structs.
//!
//! gcc and the C library headers are needed (as for the VM tests: `apt-get install gcc`).

// Test helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use pagetables::mem::{GuestMemoryRead, MemoryError};
use vhost_user_iommu_model::guest_tables::{self, Binding, Scope, SoftCaps};
use vhost_user_iommu_model::protocol::*;
use zerocopy::FromBytes;

const HEAD: usize = 4;
const TAIL: usize = 4;

fn patch_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/linux/patches");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("0001-") && n.ends_with(".patch"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one 0001-*.patch in {}", dir.display());
    found.remove(0)
}

/// The lines patch 0001 adds to the uAPI header (it only adds).
fn header_additions() -> String {
    let text = std::fs::read_to_string(patch_path()).unwrap();
    let mut out = String::new();
    let mut in_header = false;
    for line in text.lines() {
        if let Some(path) = line.strip_prefix("+++ ") {
            in_header = path == "b/include/uapi/linux/virtio_iommu.h";
            continue;
        }
        if line.starts_with("diff --git") {
            in_header = false;
        }
        // format-patch's signature: the end of the diff.
        if line == "-- " {
            break;
        }
        if !in_header {
            continue;
        }
        if let Some(added) = line.strip_prefix('+') {
            out.push_str(added);
            out.push('\n');
        } else {
            assert!(
                !line.starts_with('-') || line.starts_with("---"),
                "patch 0001 removes a header line: {line}"
            );
        }
    }
    assert!(
        out.contains("struct virtio_iommu_req_invalidate"),
        "no header additions found"
    );
    out
}

/// Fields whose offset and size are compared: (C struct, C field).
const FIELDS: &[(&str, &str)] = &[
    ("virtio_iommu_req_attach_table", "domain"),
    ("virtio_iommu_req_attach_table", "format"),
    ("virtio_iommu_req_attach_table", "flags"),
    ("virtio_iommu_req_attach_table", "reserved"),
    ("virtio_iommu_req_attach_table", "desc"),
    ("virtio_iommu_req_attach_table", "vtd.addr_width"),
    ("virtio_iommu_req_attach_table", "vtd.pgd"),
    ("virtio_iommu_req_attach_table", "vtd.flags"),
    ("virtio_iommu_req_attach_table", "vmsa.asid"),
    ("virtio_iommu_req_attach_table", "vmsa.ttbr"),
    ("virtio_iommu_req_attach_table", "vmsa.tcr"),
    ("virtio_iommu_req_attach_table", "vmsa.mair"),
    ("virtio_iommu_req_attach_table", "smmuv3.s1fmt"),
    ("virtio_iommu_req_attach_table", "smmuv3.s1dss"),
    ("virtio_iommu_req_attach_table", "smmuv3.s1cdmax"),
    ("virtio_iommu_req_attach_table", "smmuv3.s1contextptr"),
    ("virtio_iommu_req_attach_table", "reserved2"),
    ("virtio_iommu_req_attach_table", "tail"),
    ("virtio_iommu_req_detach_table", "domain"),
    ("virtio_iommu_req_detach_table", "reserved"),
    ("virtio_iommu_req_detach_table", "tail"),
    ("virtio_iommu_req_invalidate", "scope"),
    ("virtio_iommu_req_invalidate", "caches"),
    ("virtio_iommu_req_invalidate", "flags"),
    ("virtio_iommu_req_invalidate", "reserved"),
    ("virtio_iommu_req_invalidate", "domain"),
    ("virtio_iommu_req_invalidate", "pasid"),
    ("virtio_iommu_req_invalidate", "reserved2"),
    ("virtio_iommu_req_invalidate", "archid"),
    ("virtio_iommu_req_invalidate", "virt_start"),
    ("virtio_iommu_req_invalidate", "nr_pages"),
    ("virtio_iommu_req_invalidate", "granule"),
    ("virtio_iommu_req_invalidate", "reserved3"),
    ("virtio_iommu_req_invalidate", "tail"),
    ("virtio_iommu_req_attach_pasid", "domain"),
    ("virtio_iommu_req_attach_pasid", "endpoint"),
    ("virtio_iommu_req_attach_pasid", "pasid"),
    ("virtio_iommu_req_attach_pasid", "reserved"),
    ("virtio_iommu_req_attach_pasid", "tail"),
    ("virtio_iommu_req_page_resp", "endpoint"),
    ("virtio_iommu_req_page_resp", "pasid"),
    ("virtio_iommu_req_page_resp", "grpid"),
    ("virtio_iommu_req_page_resp", "code"),
    ("virtio_iommu_req_page_resp", "flags"),
    ("virtio_iommu_req_page_resp", "reserved"),
    ("virtio_iommu_req_page_resp", "tail"),
    ("virtio_iommu_page_request", "reason"),
    ("virtio_iommu_page_request", "flags"),
    ("virtio_iommu_page_request", "endpoint"),
    ("virtio_iommu_page_request", "pasid"),
    ("virtio_iommu_page_request", "address"),
    ("virtio_iommu_page_request", "grpid"),
    ("virtio_iommu_page_request", "reserved2"),
];

const STRUCTS: &[&str] = &[
    "virtio_iommu_req_attach_table",
    "virtio_iommu_req_detach_table",
    "virtio_iommu_req_invalidate",
    "virtio_iommu_req_attach_pasid",
    "virtio_iommu_req_page_resp",
    "virtio_iommu_page_request",
    "virtio_iommu_probe_output_size",
    "virtio_iommu_probe_pasid_size",
    "virtio_iommu_probe_page_table_fmt",
    "virtio_iommu_probe_pasid_table_fmt",
    "virtio_iommu_probe_host_iommu",
    "virtio_iommu_probe_page_request",
];

/// Constants compared with the model's.
const CONSTANTS: &[&str] = &[
    "VIRTIO_IOMMU_F_ATTACH_TABLE",
    "VIRTIO_IOMMU_F_PAGE_REQUEST",
    "VIRTIO_IOMMU_T_ATTACH_TABLE",
    "VIRTIO_IOMMU_T_INVALIDATE",
    "VIRTIO_IOMMU_T_PAGE_RESP",
    "VIRTIO_IOMMU_T_DETACH_TABLE",
    "VIRTIO_IOMMU_T_ATTACH_PASID",
    "VIRTIO_IOMMU_T_DETACH_PASID",
    "VIRTIO_IOMMU_FORMAT_ARM_VMSA_S1",
    "VIRTIO_IOMMU_FORMAT_ARM_SMMUV3",
    "VIRTIO_IOMMU_FORMAT_INTEL_VTD_S1",
    "VIRTIO_IOMMU_INV_S_DOMAIN",
    "VIRTIO_IOMMU_INV_S_PASID",
    "VIRTIO_IOMMU_INV_S_ADDRESS",
    "VIRTIO_IOMMU_INV_C_IOTLB",
    "VIRTIO_IOMMU_INV_C_DEV_IOTLB",
    "VIRTIO_IOMMU_INV_C_PASID",
    "VIRTIO_IOMMU_INV_F_PASID",
    "VIRTIO_IOMMU_INV_F_ARCHID",
    "VIRTIO_IOMMU_INV_F_LEAF",
    "VIRTIO_IOMMU_PAGE_RESP_SUCCESS",
    "VIRTIO_IOMMU_PAGE_RESP_INVALID",
    "VIRTIO_IOMMU_PAGE_RESP_FAILURE",
    "VIRTIO_IOMMU_PAGE_RESP_F_PASID_VALID",
    "VIRTIO_IOMMU_PROBE_T_OUTPUT_SIZE",
    "VIRTIO_IOMMU_PROBE_T_PASID_SIZE",
    "VIRTIO_IOMMU_PROBE_T_PAGE_TABLE_FMT",
    "VIRTIO_IOMMU_PROBE_T_PASID_TABLE_FMT",
    "VIRTIO_IOMMU_PROBE_T_HOST_IOMMU",
    "VIRTIO_IOMMU_PROBE_T_PAGE_REQUEST",
    "VIRTIO_IOMMU_VTD_S1_CAP_1G",
    "VIRTIO_IOMMU_FAULT_R_PAGE_REQUEST",
];

/// The C program: prints `size STRUCT N`, `field STRUCT.FIELD OFFSET SIZE`, `const NAME N`,
/// `attach_table HEX`, `invalidate HEX`; then parses the PROBE properties given in hex on
/// stdin and prints `prop ...` lines.
fn c_program() -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <string.h>\n\
         #include <endian.h>\n#include <linux/virtio_iommu.h>\n",
    );
    c.push_str(&header_additions());
    c.push_str(
        r#"
static void hex(const char *name, const void *p, size_t n)
{
	const unsigned char *b = p;
	printf("%s ", name);
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
	printf("\n");
}

int main(void)
{
	unsigned char props[4096];
	size_t n = 0;
	unsigned int v;
"#,
    );
    for s in STRUCTS {
        c.push_str(&format!(
            "\tprintf(\"size {s} %zu\\n\", sizeof(struct {s}));\n"
        ));
    }
    for (s, f) in FIELDS {
        c.push_str(&format!(
            "\tprintf(\"field {s}.{f} %zu %zu\\n\", offsetof(struct {s}, {f}), \
             sizeof(((struct {s} *)0)->{f}));\n"
        ));
    }
    for k in CONSTANTS {
        c.push_str(&format!(
            "\tprintf(\"const {k} %u\\n\", (unsigned int)({k}));\n"
        ));
    }
    c.push_str(
        r#"
	{
		struct virtio_iommu_req_attach_table a;

		memset(&a, 0, sizeof(a));
		a.head.type = VIRTIO_IOMMU_T_ATTACH_TABLE;
		a.domain = htole32(7);
		a.format = htole16(VIRTIO_IOMMU_FORMAT_INTEL_VTD_S1);
		a.vtd.addr_width = htole32(48);
		a.vtd.pgd = htole64(0x123000);
		hex("attach_table", &a, sizeof(a));
	}
	{
		struct virtio_iommu_req_invalidate i;

		memset(&i, 0, sizeof(i));
		i.head.type = VIRTIO_IOMMU_T_INVALIDATE;
		i.scope = htole16(VIRTIO_IOMMU_INV_S_ADDRESS);
		i.caches = htole16(VIRTIO_IOMMU_INV_C_IOTLB | VIRTIO_IOMMU_INV_C_DEV_IOTLB);
		i.flags = htole16(VIRTIO_IOMMU_INV_F_LEAF | VIRTIO_IOMMU_INV_F_PASID);
		i.domain = htole32(9);
		i.pasid = htole32(5);
		i.virt_start = htole64(0x40000000);
		i.nr_pages = htole64(3);
		i.granule = 21;
		hex("invalidate", &i, sizeof(i));
	}
	while (n < sizeof(props) && scanf("%2x", &v) == 1)
		props[n++] = v;
	for (size_t off = 0; off + 4 <= n;) {
		struct virtio_iommu_probe_property *h = (void *)(props + off);
		unsigned int type = le16toh(h->type) & VIRTIO_IOMMU_PROBE_T_MASK;
		size_t len = le16toh(h->length) + sizeof(*h);

		if (type == VIRTIO_IOMMU_PROBE_T_NONE || off + len > n)
			break;
		switch (type) {
		case VIRTIO_IOMMU_PROBE_T_OUTPUT_SIZE: {
			struct virtio_iommu_probe_output_size *p = (void *)h;
			printf("prop output_size len=%zu bits=%u\n", len, le32toh(p->bits));
			break;
		}
		case VIRTIO_IOMMU_PROBE_T_PASID_SIZE: {
			struct virtio_iommu_probe_pasid_size *p = (void *)h;
			printf("prop pasid_size len=%zu bits=%u\n", len, le32toh(p->bits));
			break;
		}
		case VIRTIO_IOMMU_PROBE_T_PAGE_TABLE_FMT: {
			struct virtio_iommu_probe_page_table_fmt *p = (void *)h;
			printf("prop page_table_fmt.%u len=%zu caps=%u asid_bits=%u\n",
			       le16toh(p->format), len, le32toh(p->caps), p->asid_bits);
			break;
		}
		case VIRTIO_IOMMU_PROBE_T_PASID_TABLE_FMT: {
			struct virtio_iommu_probe_pasid_table_fmt *p = (void *)h;
			printf("prop pasid_table_fmt.%u len=%zu caps=%u max_s1cdmax=%u\n",
			       le16toh(p->format), len, le32toh(p->caps), le32toh(p->max_s1cdmax));
			break;
		}
		case VIRTIO_IOMMU_PROBE_T_HOST_IOMMU: {
			struct virtio_iommu_probe_host_iommu *p = (void *)h;
			printf("prop host_iommu len=%zu kind=%u\n", len, le16toh(p->kind));
			break;
		}
		case VIRTIO_IOMMU_PROBE_T_PAGE_REQUEST: {
			struct virtio_iommu_probe_page_request *p = (void *)h;
			printf("prop page_request len=%zu max_outstanding_groups=%u\n", len,
			       le32toh(p->max_outstanding_groups));
			break;
		}
		default:
			printf("prop unknown.%u len=%zu\n", type, len);
		}
		off += len;
	}
	return 0;
}
"#,
    );
    c
}

/// Compile and run the C program with `stdin`; its output lines.
fn run_c(stdin: &str) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("vui-uapi-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("uapi.c");
    let bin = dir.join("uapi");
    std::fs::write(&src, c_program()).unwrap();
    let cc = Command::new("gcc")
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc not found: the uAPI header test needs gcc (apt-get install gcc)");
    assert!(
        cc.status.success(),
        "gcc failed on the patch's header:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut child = Command::new(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut si = child.stdin.take().unwrap();
        si.write_all(stdin.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Guest RAM of the decoder: 16 MiB of zeros.
struct Ram;
impl GuestMemoryRead for Ram {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        self.check_range(gpa, 8).map(|()| 0)
    }
    fn check_range(&self, gpa: u64, len: u64) -> Result<(), MemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= 16 << 20 => Ok(()),
            _ => Err(MemoryError::OutOfRange { gpa, len }),
        }
    }
}

struct CSide {
    size: BTreeMap<String, usize>,
    field: BTreeMap<String, (usize, usize)>,
    constant: BTreeMap<String, u64>,
    bytes: BTreeMap<String, Vec<u8>>,
    props: Vec<String>,
}

fn c_side(props: &[u8]) -> CSide {
    let hex_in: String = props.iter().map(|b| format!("{b:02x} ")).collect();
    let mut c = CSide {
        size: BTreeMap::new(),
        field: BTreeMap::new(),
        constant: BTreeMap::new(),
        bytes: BTreeMap::new(),
        props: Vec::new(),
    };
    for line in run_c(&hex_in) {
        let w: Vec<&str> = line.split(' ').collect();
        match w[0] {
            "size" => {
                c.size.insert(w[1].into(), w[2].parse().unwrap());
            }
            "field" => {
                c.field
                    .insert(w[1].into(), (w[2].parse().unwrap(), w[3].parse().unwrap()));
            }
            "const" => {
                c.constant.insert(w[1].into(), w[2].parse().unwrap());
            }
            "attach_table" | "invalidate" => {
                c.bytes.insert(w[0].into(), unhex(w[1]));
            }
            "prop" => c.props.push(w[1..].join(" ")),
            other => panic!("unexpected output {other}"),
        }
    }
    c
}

#[test]
fn patch_header_matches_the_model() {
    let mut props = vec![0u8; PROBE_PROPERTIES_SIZE + 8];
    let end = guest_tables::probe_properties(&SoftCaps::new(8), None, &mut props, 0).unwrap();
    let c = c_side(&props[..end]);

    // Whole structs.
    let size = |s: &str| c.size[s];
    assert_eq!(
        size("virtio_iommu_req_attach_table"),
        HEAD + size_of::<AttachTableBody>() + TAIL
    );
    assert_eq!(
        size("virtio_iommu_req_detach_table"),
        HEAD + size_of::<DetachTableBody>() + TAIL
    );
    assert_eq!(
        size("virtio_iommu_req_invalidate"),
        HEAD + size_of::<InvalidateBody>() + TAIL
    );
    assert_eq!(size("virtio_iommu_req_invalidate"), 64, "as the drafts");
    assert_eq!(
        size("virtio_iommu_req_attach_pasid"),
        HEAD + size_of::<PasidAttachBody>() + TAIL
    );
    assert_eq!(
        size("virtio_iommu_req_page_resp"),
        HEAD + size_of::<PageRespBody>() + TAIL
    );
    assert_eq!(
        size("virtio_iommu_page_request"),
        size_of::<PageRequestRecord>()
    );
    for s in STRUCTS.iter().filter(|s| s.contains("_probe_")) {
        assert_eq!(size(s) % 8, 0, "{s}: properties are multiples of 8 bytes");
    }

    // Fields: the model's structs (offsets from the start of the request).
    let f = |s: &str, field: &str| c.field[&format!("{s}.{field}")];
    let at = "virtio_iommu_req_attach_table";
    assert_eq!(
        f(at, "domain").0,
        HEAD + offset_of!(AttachTableBody, domain)
    );
    assert_eq!(
        f(at, "format").0,
        HEAD + offset_of!(AttachTableBody, format)
    );
    assert_eq!(f(at, "flags").0, HEAD + offset_of!(AttachTableBody, flags));
    assert_eq!(
        f(at, "reserved"),
        (HEAD + offset_of!(AttachTableBody, reserved), 4)
    );
    assert_eq!(
        f(at, "desc"),
        (HEAD + offset_of!(AttachTableBody, desc), 48)
    );
    assert_eq!(
        f(at, "reserved2"),
        (HEAD + offset_of!(AttachTableBody, reserved2), 4)
    );
    assert_eq!(f(at, "tail").0, HEAD + size_of::<AttachTableBody>());
    let inv = "virtio_iommu_req_invalidate";
    for (field, off, len) in [
        ("scope", offset_of!(InvalidateBody, scope), 2),
        ("caches", offset_of!(InvalidateBody, caches), 2),
        ("flags", offset_of!(InvalidateBody, flags), 2),
        ("reserved", offset_of!(InvalidateBody, reserved0), 2),
        ("domain", offset_of!(InvalidateBody, domain), 4),
        ("pasid", offset_of!(InvalidateBody, pasid), 4),
        ("reserved2", offset_of!(InvalidateBody, reserved1), 4),
        ("archid", offset_of!(InvalidateBody, archid), 8),
        ("virt_start", offset_of!(InvalidateBody, virt_start), 8),
        ("nr_pages", offset_of!(InvalidateBody, nr_pages), 8),
        ("granule", offset_of!(InvalidateBody, granule), 1),
        ("reserved3", offset_of!(InvalidateBody, reserved2), 11),
        ("tail", size_of::<InvalidateBody>(), 4),
    ] {
        assert_eq!(f(inv, field), (HEAD + off, len), "INVALIDATE {field}");
    }
    let dt = "virtio_iommu_req_detach_table";
    assert_eq!(
        f(dt, "domain").0,
        HEAD + offset_of!(DetachTableBody, domain)
    );
    assert_eq!(
        f(dt, "reserved").0,
        HEAD + offset_of!(DetachTableBody, reserved)
    );
    let ap = "virtio_iommu_req_attach_pasid";
    assert_eq!(
        f(ap, "domain").0,
        HEAD + offset_of!(PasidAttachBody, domain)
    );
    assert_eq!(
        f(ap, "endpoint").0,
        HEAD + offset_of!(PasidAttachBody, endpoint)
    );
    assert_eq!(f(ap, "pasid").0, HEAD + offset_of!(PasidAttachBody, pasid));
    let pr = "virtio_iommu_req_page_resp";
    assert_eq!(
        f(pr, "endpoint").0,
        HEAD + offset_of!(PageRespBody, endpoint)
    );
    assert_eq!(f(pr, "pasid").0, HEAD + offset_of!(PageRespBody, pasid));
    assert_eq!(f(pr, "grpid").0, HEAD + offset_of!(PageRespBody, grpid));
    assert_eq!(f(pr, "code").0, HEAD + offset_of!(PageRespBody, code));
    assert_eq!(f(pr, "flags").0, HEAD + offset_of!(PageRespBody, flags));
    let rq = "virtio_iommu_page_request";
    assert_eq!(f(rq, "flags").0, offset_of!(PageRequestRecord, flags));
    assert_eq!(f(rq, "endpoint").0, offset_of!(PageRequestRecord, endpoint));
    assert_eq!(f(rq, "pasid").0, offset_of!(PageRequestRecord, pasid));
    assert_eq!(f(rq, "address").0, offset_of!(PageRequestRecord, address));
    assert_eq!(f(rq, "grpid").0, offset_of!(PageRequestRecord, grpid));
    // Descriptors: where docs/PASID.md §4.1 (and the model's decoder) reads them.
    for (field, off) in [
        ("vtd.addr_width", 16),
        ("vtd.pgd", 24),
        ("vtd.flags", 32),
        ("vmsa.asid", 16),
        ("vmsa.ttbr", 24),
        ("vmsa.tcr", 32),
        ("vmsa.mair", 40),
        ("smmuv3.s1fmt", 16),
        ("smmuv3.s1dss", 17),
        ("smmuv3.s1cdmax", 20),
        ("smmuv3.s1contextptr", 24),
    ] {
        assert_eq!(f(at, field).0, off, "ATTACH_TABLE {field}");
    }

    // Constants.
    let k = |name: &str| c.constant[name];
    assert_eq!(k("VIRTIO_IOMMU_F_ATTACH_TABLE"), u64::from(F_ATTACH_TABLE));
    assert_eq!(k("VIRTIO_IOMMU_F_PAGE_REQUEST"), u64::from(F_PAGE_REQUEST));
    for (name, v) in [
        ("VIRTIO_IOMMU_T_ATTACH_TABLE", T_ATTACH_TABLE),
        ("VIRTIO_IOMMU_T_INVALIDATE", T_INVALIDATE),
        ("VIRTIO_IOMMU_T_PAGE_RESP", T_PAGE_RESP),
        ("VIRTIO_IOMMU_T_DETACH_TABLE", T_DETACH_TABLE),
        ("VIRTIO_IOMMU_T_ATTACH_PASID", T_ATTACH_PASID),
        ("VIRTIO_IOMMU_T_DETACH_PASID", T_DETACH_PASID),
    ] {
        assert_eq!(k(name), u64::from(v), "{name}");
    }
    for (name, v) in [
        ("VIRTIO_IOMMU_FORMAT_ARM_VMSA_S1", FMT_ARM_VMSA_S1),
        ("VIRTIO_IOMMU_FORMAT_ARM_SMMUV3", FMT_ARM_SMMUV3),
        ("VIRTIO_IOMMU_FORMAT_INTEL_VTD_S1", FMT_INTEL_VTD_S1),
        ("VIRTIO_IOMMU_INV_S_DOMAIN", INV_SCOPE_DOMAIN),
        ("VIRTIO_IOMMU_INV_S_PASID", INV_SCOPE_PASID),
        ("VIRTIO_IOMMU_INV_S_ADDRESS", INV_SCOPE_ADDRESS),
        ("VIRTIO_IOMMU_INV_C_IOTLB", INV_CACHE_IOTLB),
        ("VIRTIO_IOMMU_INV_C_DEV_IOTLB", INV_CACHE_DEV_IOTLB),
        ("VIRTIO_IOMMU_INV_C_PASID", INV_CACHE_PASID),
        ("VIRTIO_IOMMU_INV_F_PASID", INV_F_PASID),
        ("VIRTIO_IOMMU_INV_F_ARCHID", INV_F_ARCHID),
        ("VIRTIO_IOMMU_INV_F_LEAF", INV_F_LEAF),
        ("VIRTIO_IOMMU_PAGE_RESP_SUCCESS", PAGE_RESP_SUCCESS),
        ("VIRTIO_IOMMU_PAGE_RESP_INVALID", PAGE_RESP_INVALID),
        ("VIRTIO_IOMMU_PAGE_RESP_FAILURE", PAGE_RESP_FAILURE),
        (
            "VIRTIO_IOMMU_PAGE_RESP_F_PASID_VALID",
            PAGE_RESP_F_PASID_VALID,
        ),
        ("VIRTIO_IOMMU_PROBE_T_OUTPUT_SIZE", PROBE_T_OUTPUT_SIZE),
        ("VIRTIO_IOMMU_PROBE_T_PASID_SIZE", PROBE_T_PASID_SIZE),
        (
            "VIRTIO_IOMMU_PROBE_T_PAGE_TABLE_FMT",
            PROBE_T_PAGE_TABLE_FMT,
        ),
        (
            "VIRTIO_IOMMU_PROBE_T_PASID_TABLE_FMT",
            PROBE_T_PASID_TABLE_FMT,
        ),
        ("VIRTIO_IOMMU_PROBE_T_HOST_IOMMU", PROBE_T_HOST_IOMMU),
        ("VIRTIO_IOMMU_PROBE_T_PAGE_REQUEST", PROBE_T_PAGE_REQUEST),
    ] {
        assert_eq!(k(name), u64::from(v), "{name}");
    }
    assert_eq!(k("VIRTIO_IOMMU_VTD_S1_CAP_1G"), u64::from(VTD_CAP_1G));
    assert_eq!(
        k("VIRTIO_IOMMU_FAULT_R_PAGE_REQUEST"),
        u64::from(FAULT_R_PAGE_REQUEST)
    );

    // C encodes, the model decodes: ATTACH_TABLE of a VT-d first-stage table...
    let a = &c.bytes["attach_table"];
    assert_eq!(a.len(), 72);
    let body = AttachTableBody::read_from_bytes(&a[HEAD..a.len() - TAIL]).unwrap();
    assert_eq!(
        (body.domain.get(), body.format.get()),
        (7, FMT_INTEL_VTD_S1)
    );
    match guest_tables::decode(&body, &SoftCaps::new(8), &Ram) {
        Ok(Binding::Vtd(fs)) => {
            assert_eq!(fs.params().pgtbl, 0x123000);
            assert_eq!(fs.params().addr_width, 48);
            assert_eq!(fs.levels(), 4);
        }
        other => panic!("ATTACH_TABLE from the header decoded as {other:?}"),
    }
    // ... and an INVALIDATE of three 2 MiB pages of PASID 5, leaf entries only.
    let i = &c.bytes["invalidate"];
    assert_eq!(i.len(), 64);
    let body = InvalidateBody::read_from_bytes(&i[HEAD..i.len() - TAIL]).unwrap();
    let inv = guest_tables::parse_invalidate(&body, 8).unwrap();
    assert_eq!(inv.domain, 9);
    assert_eq!(inv.pasid, Some(5));
    assert!(inv.leaf);
    assert_eq!(inv.caches, INV_CACHE_IOTLB | INV_CACHE_DEV_IOTLB);
    assert_eq!(
        inv.scope,
        Scope::Address {
            first_vpn: 0x40000,
            vpns: 3 * 512
        }
    );

    // The model encodes PROBE properties, C decodes them with the header's structs.
    assert_eq!(
        c.props,
        vec![
            "output_size len=8 bits=48",
            "pasid_size len=8 bits=8",
            "page_table_fmt.1 len=16 caps=7 asid_bits=16",
            "page_table_fmt.4 len=16 caps=7 asid_bits=0",
            "pasid_table_fmt.2 len=16 caps=7 max_s1cdmax=8",
            "host_iommu len=8 kind=0",
            "page_request len=8 max_outstanding_groups=512",
        ]
    );
}
