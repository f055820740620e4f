//! The operator image built by `scripts/build-image.sh` (no container daemon, no registry),
//! read back from its docker-archive the way a container runtime reads it: the name that
//! `ctr images import` / `kind load image-archive` / `k3d image import` register, the config
//! the chart's Pod spec relies on (non-root 65532, the entrypoint, the ports), and the files
//! the binary needs at run time (itself, statically linked, and the CA bundle).
//!
//! `scripts/test.sh` builds the archive before `cargo test`. Under CI=true a missing archive
//! fails; elsewhere the tests skip, saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const IMAGE_NAME: &str = "linktoken-operator:dev";
const BINARY: &str = "usr/local/bin/linktoken-operator";
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The archive, or None (after saying so loudly) when it was not built outside CI.
fn archive() -> Option<Vec<u8>> {
    let path = std::env::var_os("IMAGE_ARCHIVE").map_or_else(
        || root().join("target/image/linktoken-operator-image.tar"),
        PathBuf::from,
    );
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if in_ci() => panic!(
            "{}: {e}; CI builds it with scripts/build-image.sh before cargo test",
            path.display()
        ),
        Err(e) => {
            eprintln!(
                "SKIPPED: no image archive at {} ({e}); build it with `bash scripts/build-image.sh`",
                path.display()
            );
            None
        }
    }
}

/// The regular files of a tar stream, by path (ustar, with GNU long names and PAX paths:
/// what buildah writes). Directories, links and other entries are left out.
fn tar_files(data: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn field(h: &[u8]) -> String {
        let end = h.iter().position(|&b| b == 0).unwrap_or(h.len());
        String::from_utf8_lossy(&h[..end]).into_owned()
    }
    fn octal(h: &[u8]) -> u64 {
        let s = field(h);
        u64::from_str_radix(s.trim(), 8).unwrap_or_else(|e| panic!("bad octal {s:?}: {e}"))
    }
    let mut files = BTreeMap::new();
    let mut next_name: Option<String> = None;
    let mut pos = 0;
    while pos + 512 <= data.len() {
        let h = &data[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size = usize::try_from(octal(&h[124..136])).expect("entry size fits usize");
        let mode = u32::try_from(octal(&h[100..108])).expect("mode fits u32");
        let kind = h[156];
        let body = &data[pos + 512..pos + 512 + size];
        let mut name = field(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = field(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match kind {
            b'L' => next_name = Some(field(body)),
            b'x' => {
                // PAX records: "LEN key=value\n".
                for record in String::from_utf8_lossy(body).lines() {
                    if let Some((_, kv)) = record.split_once(' ')
                        && let Some(path) = kv.strip_prefix("path=")
                    {
                        next_name = Some(path.to_owned());
                    }
                }
            }
            _ => {
                let name = next_name.take().unwrap_or(name);
                if kind == b'0' || kind == 0 {
                    let name = name.trim_start_matches("./").trim_start_matches('/');
                    files.insert(name.to_owned(), (mode, body.to_vec()));
                }
            }
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    files
}

struct Image {
    repo_tags: Vec<String>,
    config_digest: String,
    config: serde_json::Value,
    /// Every regular file of every layer, by path (a later layer wins).
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

fn read_image(archive: &[u8]) -> Image {
    let entries = tar_files(archive);
    let manifest: serde_json::Value =
        serde_json::from_slice(&entries.get("manifest.json").expect("manifest.json").1)
            .expect("manifest.json is JSON");
    let images = manifest.as_array().expect("manifest.json is a list");
    assert_eq!(images.len(), 1, "one image in the archive: {manifest}");
    let image = &images[0];
    let config_name = image["Config"].as_str().expect("Config");
    let config_bytes = &entries.get(config_name).expect("the config file").1;
    // The image ID is the config's sha256; the file is named after it.
    let config_digest = hex::encode(Sha256::digest(config_bytes));
    assert!(
        config_name.contains(&config_digest),
        "{config_name} is not named after its sha256 {config_digest}"
    );
    let mut files = BTreeMap::new();
    for layer in image["Layers"].as_array().expect("Layers") {
        let layer = layer.as_str().expect("layer path");
        files.extend(tar_files(&entries.get(layer).expect("the layer file").1));
    }
    Image {
        repo_tags: image["RepoTags"]
            .as_array()
            .expect("RepoTags")
            .iter()
            .map(|t| t.as_str().expect("tag").to_owned())
            .collect(),
        config_digest,
        config: serde_json::from_slice(config_bytes).expect("config is JSON"),
        files,
    }
}

/// Whether a 64-bit little-endian ELF executable asks for a program interpreter (the dynamic
/// loader, which an image without /lib does not have).
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF");
    assert_eq!(elf[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        usize::try_from(u64::from_le_bytes(
            elf[o..o + 8].try_into().expect("8 bytes"),
        ))
        .expect("offset fits usize")
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    assert!(phnum > 0, "no program headers");
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[ph..ph + 4].try_into().expect("4 bytes"));
        // PT_INTERP: the path of the loader, NUL-terminated.
        (p_type == 3).then(|| {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            String::from_utf8_lossy(&elf[off..off + size])
                .trim_end_matches('\0')
                .to_owned()
        })
    })
}

#[test]
fn image_archive_has_what_the_chart_runs() {
    let Some(archive) = archive() else { return };
    let image = read_image(&archive);

    // The name the chart's quick start installs with --set image.repository/tag; the kubelet
    // asks the runtime for it as docker.io/library/linktoken-operator:dev.
    assert!(
        image
            .repo_tags
            .iter()
            .any(|t| t == IMAGE_NAME || t == &format!("docker.io/library/{IMAGE_NAME}")),
        "archive names {:?}, not {IMAGE_NAME}",
        image.repo_tags
    );

    let config = &image.config["config"];
    // Numeric, so that the chart's runAsNonRoot can verify it without an /etc/passwd lookup.
    assert_eq!(config["User"], "65532:65532", "config: {config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/linktoken-operator"]),
        "config: {config}"
    );
    for port in ["8080/tcp", "8081/tcp"] {
        assert!(
            config["ExposedPorts"].get(port).is_some(),
            "port {port} not exposed: {config}"
        );
    }
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");

    let (mode, binary) = image
        .files
        .get(BINARY)
        .expect("the operator binary in a layer");
    assert_eq!(
        mode & 0o111,
        0o111,
        "binary mode {mode:o} is not executable"
    );
    assert_eq!(
        elf_interpreter(binary),
        None,
        "the binary needs a dynamic loader, which the image does not have"
    );

    let (_, ca) = image
        .files
        .get(CA_BUNDLE)
        .expect("the CA bundle in a layer");
    assert!(
        String::from_utf8_lossy(ca)
            .matches("BEGIN CERTIFICATE")
            .count()
            > 50,
        "the CA bundle holds too few certificates to reach Atlas"
    );
    let passwd = String::from_utf8_lossy(&image.files.get("etc/passwd").expect("/etc/passwd").1)
        .into_owned();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
    assert!(image.files.contains_key("etc/group"));
    // Nothing else: no shell, no package manager, no libraries.
    assert_eq!(
        image.files.keys().collect::<Vec<_>>(),
        ["etc/group", "etc/passwd", CA_BUNDLE, BINARY],
        "unexpected files in the image"
    );
    eprintln!("image sha256:{}", image.config_digest);
}

/// Packaging the same binary again gives the same image digest: fixed timestamps, no history,
/// files staged with fixed modes. (Building the binary twice would double a multi-minute
/// release build; a Rust release build from the same sources and paths is deterministic.)
#[test]
fn image_packaging_is_reproducible() {
    let Some(archive) = archive() else { return };
    let first = read_image(&archive);
    let binary = root().join("target/image/x86_64-unknown-linux-gnu/release/linktoken-operator");
    let built = std::fs::read(&binary).expect("the binary the archive was built from");
    assert!(
        first.files[BINARY].1 == built,
        "the archive is stale: {} changed since; rerun scripts/build-image.sh",
        binary.display()
    );
    let has_buildah = Command::new("buildah").arg("--version").output().is_ok();
    if !has_buildah {
        assert!(!in_ci(), "buildah is missing in CI");
        eprintln!("SKIPPED: buildah is not installed; cannot package a second time");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let second_path = dir.path().join("second.tar");
    let out = Command::new("bash")
        .arg(root().join("scripts/build-image.sh"))
        .arg("--package-only")
        .env("IMAGE_ARCHIVE", &second_path)
        .current_dir(root())
        .output()
        .expect("run scripts/build-image.sh");
    assert!(
        out.status.success(),
        "second packaging failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let second = read_image(&std::fs::read(&second_path).expect("second archive"));
    assert_eq!(
        first.config_digest, second.config_digest,
        "two builds of the same binary gave different images"
    );
}

/// The static check is not vacuous: this test binary is linked dynamically and has a loader.
#[test]
fn the_static_check_sees_a_dynamic_binary() {
    let me = std::fs::read(std::env::current_exe().expect("current exe")).expect("read it");
    let interpreter = elf_interpreter(&me).expect("a dynamically linked test binary");
    assert!(interpreter.contains("ld-linux"), "{interpreter}");
}
