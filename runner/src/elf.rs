//! Checks a plugin library before `dlopen` maps it: an ELF shared object for
//! this machine whose headers, and every segment the loader maps, lie within
//! the file. A library cut short (an interrupted copy, a full disk) would
//! otherwise be mapped past its end and kill the process with SIGBUS.

use std::io::Read;
use std::path::Path;

/// `e_machine` of this build's target, where known.
const MACHINE: Option<u16> = if cfg!(target_arch = "x86_64") {
    Some(62)
} else if cfg!(target_arch = "aarch64") {
    Some(183)
} else {
    None
};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why `path` is not a whole 64-bit little-endian ELF shared library for this
/// machine, or `Ok(())`.
pub fn check_shared_library(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let size = f.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    let mut ehdr = [0u8; 64];
    if size < 64 || f.read_exact(&mut ehdr).is_err() {
        return Err(format!("not a shared library (only {size} bytes)"));
    }
    if &ehdr[..4] != b"\x7fELF" {
        return Err("not a shared library (no ELF header)".into());
    }
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err("not a 64-bit little-endian library".into());
    }
    if u16_at(&ehdr, 16) != 3 {
        return Err("an ELF file, but not a shared library (ET_DYN)".into());
    }
    if let Some(m) = MACHINE {
        if u16_at(&ehdr, 18) != m {
            return Err(format!("built for another processor (ELF machine {})", u16_at(&ehdr, 18)));
        }
    }
    let cut = |what: &str, end: u64| format!("cut short: its {what} ends at byte {end} but the file has {size} bytes");
    let (phoff, shoff) = (u64_at(&ehdr, 32), u64_at(&ehdr, 40));
    let (phentsize, phnum) = (u64::from(u16_at(&ehdr, 54)), u64::from(u16_at(&ehdr, 56)));
    let (shentsize, shnum) = (u64::from(u16_at(&ehdr, 58)), u64::from(u16_at(&ehdr, 60)));
    if phnum == 0 || phentsize < 56 {
        return Err("not a loadable library (no program headers)".into());
    }
    let ph_end = phoff.saturating_add(phentsize * phnum);
    if ph_end > size {
        return Err(cut("program header table", ph_end));
    }
    if shoff != 0 {
        let sh_end = shoff.saturating_add(shentsize * shnum);
        if sh_end > size {
            return Err(cut("section header table", sh_end));
        }
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(phoff)).map_err(|e| format!("cannot read: {e}"))?;
    f.read_exact(&mut table).map_err(|e| format!("cannot read its program headers: {e}"))?;
    for ph in table.chunks_exact(phentsize as usize) {
        const PT_LOAD: u32 = 1;
        if u32_at(ph, 0) == PT_LOAD {
            let end = u64_at(ph, 8).saturating_add(u64_at(ph, 32));
            if end > size {
                return Err(cut("loadable segment", end));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_passes_and_cut_copies_do_not() {
        // The test executable is a position-independent ELF (ET_DYN) like a library.
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.so");
        std::fs::write(&whole, &bytes).unwrap();
        if u16_at(&bytes, 16) == 3 {
            assert_eq!(check_shared_library(&whole), Ok(()));
        }
        for n in [0, 10, 64, 4096, bytes.len() / 2, bytes.len() - 1] {
            let cut = dir.path().join(format!("cut-{n}.so"));
            std::fs::write(&cut, &bytes[..n]).unwrap();
            assert!(check_shared_library(&cut).is_err(), "a copy cut at {n} bytes is refused");
        }
        let text = dir.path().join("text.so");
        std::fs::write(&text, vec![b'x'; 200]).unwrap();
        assert!(check_shared_library(&text).unwrap_err().contains("no ELF header"));
    }
}
