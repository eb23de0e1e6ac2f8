//! `Meteor::with_jar` on synthetic jars (no Python, no network): a jar is a zip, so each
//! test writes one with the entry names of `meteor-1.5.jar` and tiny tables, and checks
//! that the jar gives the same scores as the same tables read from a directory / file,
//! and that bad jars give errors naming the path.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use elmer_metrics::meteor::{
    Meteor, JAR_EXCEPTIONS_ENTRY, JAR_SYNSETS_ENTRY, PARAPHRASE_EN, SYNONYM_EXCEPTIONS,
    SYNONYM_SYNSETS,
};

// ---------------------------------------------------------------- temp dir

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "elmer-metrics-jar-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- zip writer

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Stored,
    Deflated,
    /// Deflated, sizes and CRC only in a trailing data descriptor (general flag bit 3),
    /// as the `jar` tool writes them.
    DeflatedWithDescriptor,
}

struct Entry<'a> {
    name: &'a str,
    data: &'a [u8],
    method: Method,
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(data);
    c.sum()
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A plain (non-ZIP64) zip archive, written by hand.
fn zip_bytes(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for e in entries {
        let (method, payload) = match e.method {
            Method::Stored => (0u16, e.data.to_vec()),
            _ => (8u16, deflate(e.data)),
        };
        let descriptor = e.method == Method::DeflatedWithDescriptor;
        let flags: u16 = 0x0800 | if descriptor { 0x0008 } else { 0 };
        let crc = crc32(e.data);
        let (csize, size) = (payload.len() as u32, e.data.len() as u32);
        let offset = out.len() as u32;
        // local file header
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes());
        out.extend(flags.to_le_bytes());
        out.extend(method.to_le_bytes());
        out.extend([0u8; 4]); // time, date
        if descriptor {
            out.extend([0u8; 12]);
        } else {
            out.extend(crc.to_le_bytes());
            out.extend(csize.to_le_bytes());
            out.extend(size.to_le_bytes());
        }
        out.extend((e.name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(e.name.as_bytes());
        out.extend(&payload);
        if descriptor {
            out.extend(0x0807_4b50u32.to_le_bytes());
            out.extend(crc.to_le_bytes());
            out.extend(csize.to_le_bytes());
            out.extend(size.to_le_bytes());
        }
        // central directory header
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(20u16.to_le_bytes());
        central.extend(flags.to_le_bytes());
        central.extend(method.to_le_bytes());
        central.extend([0u8; 4]);
        central.extend(crc.to_le_bytes());
        central.extend(csize.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend((e.name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]); // extra len, comment len, disk, int attr, ext attr
        central.extend(offset.to_le_bytes());
        central.extend(e.name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

// ---------------------------------------------------------------- tiny tables

/// `word\nsynset ids\n` pairs.
const SYNSETS: &str = "cat\n1 2\nfeline\n2\nmouse\n5\nrodent\n5\nbig\n7\nlarge\n7\n\
good\n9\nfine\n9\nrug\n11\nmat\n11 12\nquick\n13\nfast\n13\n";
/// `base\nforms\n` pairs (`mice` only reaches `mouse` through this table).
const EXCEPTIONS: &str = "mouse\nmice\ngood\nbetter best\n";
/// `probability\nreference phrase\nparaphrase\n` records.
const PARAPHRASES: &str = "0.5\nsat down\nwas sitting\n0.4\nwas sitting\nsat down\n\
0.3\nin a hurry\nquickly\n0.3\nquickly\nin a hurry\n";

fn cases() -> (Vec<&'static str>, Vec<Vec<&'static str>>) {
    let hyps = vec![
        "The feline sat down on the rug.",
        "mice are large",
        "it is fine , he left in a hurry",
        "a fast cat was sitting",
        "nothing in common",
        "",
    ];
    let refs = vec![
        vec!["the cat was sitting on the mat ."],
        vec!["a rodent is big", "rodents are big"],
        vec!["it is better ; he left quickly"],
        vec!["the quick feline sat down", "a fast cat sat"],
        vec!["completely different words"],
        vec!["empty hypothesis"],
    ];
    (hyps, refs)
}

fn scores(m: &Meteor) -> (f64, Vec<f64>) {
    let (hyps, refs) = cases();
    m.try_score_corpus(&hyps, &refs).expect("same lengths")
}

/// Writes the tiny tables as a synonym directory and a gzipped paraphrase file.
fn write_plain_tables(dir: &Path) -> (PathBuf, PathBuf) {
    let syn = dir.join("synonym");
    std::fs::create_dir_all(&syn).unwrap();
    std::fs::write(syn.join(SYNONYM_SYNSETS), SYNSETS).unwrap();
    std::fs::write(syn.join(SYNONYM_EXCEPTIONS), EXCEPTIONS).unwrap();
    let para = dir.join("paraphrase-en.gz");
    std::fs::write(&para, gzip(PARAPHRASES.as_bytes())).unwrap();
    (syn, para)
}

/// The non-table entries a real jar has (content irrelevant).
fn filler() -> Vec<Entry<'static>> {
    vec![
        Entry {
            name: "META-INF/MANIFEST.MF",
            data: b"Manifest-Version: 1.0\r\nMain-Class: Meteor\r\n",
            method: Method::Deflated,
        },
        Entry {
            name: "synonym/",
            data: b"",
            method: Method::Stored,
        },
        Entry {
            name: "function/english.words",
            data: b"the\n,\n.\n",
            method: Method::DeflatedWithDescriptor,
        },
        Entry {
            name: "synonym/english.relations",
            data: b"unused\n",
            method: Method::Deflated,
        },
    ]
}

fn write_jar(path: &Path, synonyms: Method, paraphrase: Option<(Method, &[u8])>) {
    let mut entries = filler();
    entries.push(Entry {
        name: JAR_EXCEPTIONS_ENTRY,
        data: EXCEPTIONS.as_bytes(),
        method: synonyms,
    });
    entries.push(Entry {
        name: JAR_SYNSETS_ENTRY,
        data: SYNSETS.as_bytes(),
        method: synonyms,
    });
    if let Some((method, data)) = paraphrase {
        entries.push(Entry {
            name: PARAPHRASE_EN,
            data,
            method,
        });
    }
    std::fs::write(path, zip_bytes(&entries)).unwrap();
}

fn assert_same(label: &str, got: &(f64, Vec<f64>), want: &(f64, Vec<f64>)) {
    assert_eq!(
        got.0.to_bits(),
        want.0.to_bits(),
        "{label}: corpus {got:?} {want:?}"
    );
    for (i, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{label}: segment {i}: {a} vs {b}");
    }
}

fn err_text(r: io::Result<Meteor>) -> (io::ErrorKind, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn jar_tables_score_like_directory_tables() {
    let t = TempDir::new("same");
    let (syn, para) = write_plain_tables(t.path());
    let from_dir = Meteor::default()
        .with_synonym_dir(&syn)
        .unwrap()
        .with_paraphrase_table(&para)
        .unwrap();
    let want = scores(&from_dir);
    // The tables really change the scores (so the comparison means something).
    let plain = scores(&Meteor::default());
    assert!(
        want.0 > plain.0 + 0.05,
        "tables {} plain {}",
        want.0,
        plain.0
    );
    assert!(want.1[1] > plain.1[1] && want.1[2] > plain.1[2]);

    let gz = gzip(PARAPHRASES.as_bytes());
    for (k, (syn_m, para_m)) in [
        (Method::Deflated, Method::Stored),
        (Method::Stored, Method::Deflated),
        (
            Method::DeflatedWithDescriptor,
            Method::DeflatedWithDescriptor,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let jar = t.path().join(format!("meteor-{k}.jar"));
        write_jar(&jar, syn_m, Some((para_m, &gz)));
        let m = Meteor::from_jar(&jar).unwrap();
        assert!(m.has_synonyms() && m.has_paraphrases());
        assert_same(&format!("jar {k}"), &scores(&m), &want);
    }
    // A plain-text paraphrase entry works too (gzip is detected, not assumed).
    let jar = t.path().join("meteor-plain.jar");
    write_jar(
        &jar,
        Method::Deflated,
        Some((Method::Deflated, PARAPHRASES.as_bytes())),
    );
    assert_same(
        "plain paraphrase entry",
        &scores(&Meteor::from_jar(&jar).unwrap()),
        &want,
    );
}

#[test]
fn jar_finds_paraphrase_table_next_to_it_like_pycocoevalcap() {
    // pycocoevalcap layout: meteor/meteor-1.5.jar + meteor/data/paraphrase-en.gz
    let t = TempDir::new("beside");
    let (syn, para) = write_plain_tables(t.path());
    let want = scores(
        &Meteor::default()
            .with_synonym_dir(&syn)
            .unwrap()
            .with_paraphrase_table(&para)
            .unwrap(),
    );
    let meteor_dir = t.path().join("meteor");
    std::fs::create_dir_all(meteor_dir.join("data")).unwrap();
    std::fs::copy(&para, meteor_dir.join(PARAPHRASE_EN)).unwrap();
    let jar = meteor_dir.join("meteor-1.5.jar");
    write_jar(&jar, Method::DeflatedWithDescriptor, None);
    let m = Meteor::default().with_jar(&jar).unwrap();
    assert!(m.has_synonyms() && m.has_paraphrases());
    assert_same("paraphrase beside jar", &scores(&m), &want);
}

#[test]
fn jar_synonyms_only_like_synonym_dir() {
    let t = TempDir::new("synonly");
    let (syn, _) = write_plain_tables(t.path());
    let want = scores(&Meteor::default().with_synonym_dir(&syn).unwrap());
    let jar = t.path().join("bare").join("meteor-1.5.jar");
    std::fs::create_dir_all(jar.parent().unwrap()).unwrap();
    write_jar(&jar, Method::Deflated, None);
    let m = Meteor::default().with_jar_synonyms(&jar).unwrap();
    assert!(m.has_synonyms() && !m.has_paraphrases());
    assert_same("synonyms only", &scores(&m), &want);

    // with_jar wants the paraphrase table as well, and says where it looked.
    let (kind, msg) = err_text(Meteor::from_jar(&jar));
    assert_eq!(kind, io::ErrorKind::NotFound, "{msg}");
    assert!(msg.starts_with(&jar.display().to_string()), "{msg}");
    assert!(msg.contains(PARAPHRASE_EN), "{msg}");
}

#[test]
fn zip_without_meteor_entries_is_an_error_naming_path_and_entry() {
    let t = TempDir::new("noentries");
    let jar = t.path().join("other.jar");
    std::fs::write(&jar, zip_bytes(&filler())).unwrap();
    for r in [
        Meteor::from_jar(&jar),
        Meteor::default().with_jar_synonyms(&jar),
    ] {
        let (kind, msg) = err_text(r);
        assert_eq!(kind, io::ErrorKind::InvalidData, "{msg}");
        assert!(msg.starts_with(&jar.display().to_string()), "{msg}");
        assert!(msg.contains("not a METEOR 1.5 jar"), "{msg}");
        assert!(msg.contains(JAR_EXCEPTIONS_ENTRY), "{msg}");
    }
    // Only one of the two synonym entries.
    let jar2 = t.path().join("half.jar");
    let entries = [Entry {
        name: JAR_EXCEPTIONS_ENTRY,
        data: EXCEPTIONS.as_bytes(),
        method: Method::Deflated,
    }];
    std::fs::write(&jar2, zip_bytes(&entries)).unwrap();
    let (_, msg) = err_text(Meteor::from_jar(&jar2));
    assert!(msg.starts_with(&jar2.display().to_string()), "{msg}");
    assert!(msg.contains(JAR_SYNSETS_ENTRY), "{msg}");
    // An empty zip (just the end record).
    let jar3 = t.path().join("empty.jar");
    std::fs::write(&jar3, zip_bytes(&[])).unwrap();
    let (_, msg) = err_text(Meteor::from_jar(&jar3));
    assert!(msg.contains("not a METEOR 1.5 jar"), "{msg}");
}

#[test]
fn non_zip_file_is_an_error_naming_path() {
    let t = TempDir::new("nonzip");
    let cases: [(&str, &[u8]); 4] = [
        ("text.jar", b"this is not a zip archive, just some text\n"),
        ("empty.jar", b""),
        ("short.jar", b"PK\x05\x06"),
        ("gzip.jar", &gzip(b"a gzip file, not a zip")),
    ];
    for (name, data) in cases {
        let p = t.path().join(name);
        std::fs::write(&p, data).unwrap();
        let (kind, msg) = err_text(Meteor::from_jar(&p));
        assert_eq!(kind, io::ErrorKind::InvalidData, "{name}: {msg}");
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        assert!(msg.contains("not a zip file"), "{msg}");
    }
    // A directory is not a jar either.
    let (_, msg) = err_text(Meteor::from_jar(t.path()));
    assert!(msg.starts_with(&t.path().display().to_string()), "{msg}");
}

#[test]
fn missing_jar_is_an_error_naming_path() {
    let t = TempDir::new("missing");
    let p = t.path().join("no-such-meteor-1.5.jar");
    for r in [
        Meteor::from_jar(&p),
        Meteor::default().with_jar_synonyms(&p),
    ] {
        let (kind, msg) = err_text(r);
        assert_eq!(kind, io::ErrorKind::NotFound, "{msg}");
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
    }
    // The directory / file loaders name the missing file too.
    let (kind, msg) = err_text(Meteor::default().with_synonym_dir(t.path()));
    assert_eq!(kind, io::ErrorKind::NotFound, "{msg}");
    assert!(msg.contains(SYNONYM_EXCEPTIONS), "{msg}");
    let (_, msg) = err_text(Meteor::default().with_paraphrase_table(&p));
    assert!(msg.starts_with(&p.display().to_string()), "{msg}");
}

#[test]
fn corrupt_or_hostile_jars_are_errors_not_panics() {
    let t = TempDir::new("corrupt");
    let good = {
        let p = t.path().join("good.jar");
        write_jar(
            &p,
            Method::Deflated,
            Some((Method::Deflated, &gzip(PARAPHRASES.as_bytes()))),
        );
        std::fs::read(&p).unwrap()
    };
    let p = t.path().join("bad.jar");
    let load = |bytes: &[u8]| {
        std::fs::write(&p, bytes).unwrap();
        Meteor::from_jar(&p)
    };
    assert!(load(&good).is_ok());

    // Every truncation fails (the end record is gone or points past the end).
    for n in 0..good.len() {
        let r = load(&good[..n]);
        let (_, msg) = err_text(r);
        assert!(msg.starts_with(&p.display().to_string()), "len {n}: {msg}");
    }
    // Flipping any byte never panics; table data is caught by the CRC-32.
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x5a;
        if let Err(e) = load(&b) {
            assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        }
    }

    // Corrupt payload with a valid structure: CRC mismatch, named by entry.
    let mut entries = filler();
    entries.push(Entry {
        name: JAR_EXCEPTIONS_ENTRY,
        data: EXCEPTIONS.as_bytes(),
        method: Method::Stored,
    });
    entries.push(Entry {
        name: JAR_SYNSETS_ENTRY,
        data: SYNSETS.as_bytes(),
        method: Method::Stored,
    });
    let mut b = zip_bytes(&entries);
    let at = find(&b, b"mouse\nmice").expect("stored exceptions");
    b[at] = b'h';
    let (kind, msg) = err_text(load(&b));
    assert_eq!(kind, io::ErrorKind::InvalidData, "{msg}");
    assert!(
        msg.contains("CRC-32") && msg.contains(JAR_EXCEPTIONS_ENTRY),
        "{msg}"
    );

    // A declared size far beyond the data (zip-bomb style claim): refused or out of range.
    let mut b = zip_bytes(&entries);
    let cd = find(&b, b"PK\x01\x02").unwrap();
    let mut patched = 0;
    let mut at = cd;
    while let Some(k) = find(&b[at..], b"PK\x01\x02") {
        let h = at + k;
        b[h + 20..h + 28].copy_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xfe, 0xff, 0xff, 0xff]);
        patched += 1;
        at = h + 4;
    }
    assert!(patched > 0);
    let (kind, msg) = err_text(load(&b));
    assert_eq!(kind, io::ErrorKind::InvalidData, "{msg}");

    // Central directory pointing outside the file, and a huge entry count.
    let mut b = good.clone();
    let eocd = b.len() - 22;
    b[eocd + 16..eocd + 20].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    assert!(load(&b).is_err());
    let mut b = good.clone();
    b[eocd + 8..eocd + 12].copy_from_slice(&[0xfe, 0xff, 0xfe, 0xff]);
    assert!(load(&b).is_err());
    // ZIP64 markers are rejected with a clear message.
    let mut b = good.clone();
    b[eocd + 8..eocd + 12].copy_from_slice(&[0xff; 4]);
    let (_, msg) = err_text(load(&b));
    assert!(msg.contains("ZIP64"), "{msg}");
    // Unsupported compression method.
    let mut b = zip_bytes(&entries);
    let mut at = 0;
    while let Some(k) = find(&b[at..], b"PK\x01\x02") {
        let h = at + k;
        b[h + 10] = 14; // LZMA
        at = h + 4;
    }
    let (_, msg) = err_text(load(&b));
    assert!(msg.contains("compression method 14"), "{msg}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
