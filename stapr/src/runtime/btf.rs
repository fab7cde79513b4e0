//! A reader for the kernel's BTF (/sys/kernel/btf/vmlinux), enough to find struct member
//! offsets (what libbpf's CO-RE relocations do for C programs, done once at load time and
//! handed to the probes as read-only globals) and the type ids of functions (what fentry
//! programs attach by), in vmlinux and in modules' split BTF (/sys/kernel/btf/<module>).
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst in the kernel tree.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _, Result};

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name_off: u32,
    /// `size` for structs, unions, ints; the referenced type id for modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// What a function returns, as far as telling a failed call by its value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetKind {
    Void,
    /// An integer (or enum) of 4 bytes or less: the low half of the return register.
    Int32,
    /// A 64-bit integer (`long`, `ssize_t`).
    Int64,
    /// A pointer, which may be an `ERR_PTR`.
    Ptr,
    /// Anything else (a struct, a bool, an unknown type): never counted as failing.
    Other,
}

/// Parsed type information of one BTF blob.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct and union ids by name (anonymous ones are left out).
    composites: HashMap<String, Vec<u32>>,
    /// Function ids by name (BTF_KIND_FUNC).
    funcs: HashMap<String, u32>,
    /// Id of `types[0]`: 0 for vmlinux, the base's type count for a module's split BTF.
    first_id: u32,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).context("BTF truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        Self::parse_on(data, None)
    }

    /// A module's BTF: its type ids follow the base's, its string offsets continue past
    /// the base's strings (which it may reference).
    pub fn parse_split(data: &[u8], base: &Btf) -> Result<Self> {
        Self::parse_on(data, Some(base))
    }

    fn parse_on(data: &[u8], base: Option<&Btf>) -> Result<Self> {
        ensure!(u16_at(data, 0)? == BTF_MAGIC, "not little-endian BTF");
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_raw = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .context("BTF type section out of range")?;
        let own = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF string section out of range")?;
        let (strings, first_id, mut types) = match base {
            Some(b) => {
                let mut s = b.strings.clone();
                s.extend_from_slice(own);
                (s, b.first_id + b.types.len() as u32, Vec::new())
            }
            // Type id 0 is `void`.
            None => (
                own.to_vec(),
                0,
                vec![Type {
                    kind: 0,
                    name_off: 0,
                    size_or_type: 0,
                    members: Vec::new(),
                }],
            ),
        };
        let mut off = 0;
        while off < types_raw.len() {
            let name_off = u32_at(types_raw, off)?;
            let info = u32_at(types_raw, off + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let size_or_type = u32_at(types_raw, off + 8)?;
            off += 12;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => off += 4,
                KIND_ARRAY => off += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(types_raw, off + 8)?;
                        members.push(Member {
                            name_off: u32_at(types_raw, off)?,
                            type_id: u32_at(types_raw, off + 4)?,
                            // With kind_flag the top 8 bits hold a bitfield size.
                            bit_offset: if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        });
                        off += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => off += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => off += 12 * vlen,
                0..=19 => {}
                _ => bail!("unknown BTF kind {kind}"),
            }
            types.push(Type {
                kind,
                name_off,
                size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            types,
            strings,
            composites: HashMap::new(),
            funcs: HashMap::new(),
            first_id,
        };
        for (i, t) in btf.types.iter().enumerate() {
            let id = first_id + i as u32;
            if t.name_off == 0 {
                continue;
            }
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && base.is_none() {
                let name = btf.name(t.name_off).to_owned();
                btf.composites.entry(name).or_default().push(id);
            } else if t.kind == KIND_FUNC {
                btf.funcs.insert(btf.name(t.name_off).to_owned(), id);
            }
        }
        Ok(btf)
    }

    /// Whether the kernel has tracepoint `name`: its BTF declares `btf_trace_<name>`.
    pub fn has_tracepoint(&self, name: &str) -> bool {
        let want = format!("btf_trace_{name}");
        self.types
            .iter()
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == want)
    }

    /// The type id of function `name`.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.funcs.get(name).copied()
    }

    /// What function `name` returns. For a module's split BTF, `base` is vmlinux's, where
    /// the module's types may point.
    pub fn func_ret(&self, name: &str, base: Option<&Btf>) -> Option<RetKind> {
        let func = self.type_of(self.func_id(name)?, base)?;
        let proto = self.type_of(func.size_or_type, base)?;
        let mut id = proto.size_or_type;
        for _ in 0..16 {
            if id == 0 {
                return Some(RetKind::Void);
            }
            let t = self.type_of(id, base)?;
            match t.kind {
                KIND_TYPEDEF..=KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                // A 1-byte int is a bool or a char: no errno in it.
                KIND_INT | KIND_ENUM if t.size_or_type == 4 || t.size_or_type == 2 => {
                    return Some(RetKind::Int32)
                }
                KIND_INT | KIND_ENUM64 if t.size_or_type == 8 => return Some(RetKind::Int64),
                KIND_PTR => return Some(RetKind::Ptr),
                _ => return Some(RetKind::Other),
            }
        }
        Some(RetKind::Other)
    }

    /// The type `id`, in this blob or (for a split blob) its base.
    fn type_of<'a>(&'a self, id: u32, base: Option<&'a Btf>) -> Option<&'a Type> {
        match id.checked_sub(self.first_id) {
            Some(i) => self.types.get(i as usize),
            None => base?.types.get(id as usize),
        }
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and
    /// unions the way C does (`skb->dev` lives in one on current kernels).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        let ids = self.composites.get(name).ok_or_else(|| {
            super::user_error(format!(
                "this kernel's BTF has no struct {name}, which stapr's probes read"
            ))
        })?;
        for &id in ids {
            if let Some(bits) = self.find_member(id, member, 0) {
                ensure!(bits % 8 == 0, "{name}.{member} is a bitfield");
                return Ok(bits / 8);
            }
        }
        Err(super::user_error(format!(
            "this kernel's BTF has no member {member} in struct {name}, which stapr's probes read"
        )))
    }

    /// Offsets in `struct pt_regs` of syscall arguments 0..=3 as they stand while the
    /// syscall runs and when it returns: x86-64's di, si, dx, r10; arm64's orig_x0 (x0
    /// itself takes the return value) and regs[1..=3].
    pub fn syscall_arg_offsets(&self) -> Result<[u32; 4]> {
        let m = |f: &str| self.member_offset("pt_regs", f);
        if cfg!(target_arch = "aarch64") {
            let regs = m("regs")?;
            Ok([m("orig_x0")?, regs + 8, regs + 16, regs + 24])
        } else if cfg!(target_arch = "x86_64") {
            Ok([m("di")?, m("si")?, m("dx")?, m("r10")?])
        } else {
            bail!("stapr reads syscall arguments from saved registers on x86-64 and arm64 only")
        }
    }

    /// Offset in `struct pt_regs` of the syscall number (x86-64 `orig_ax`, arm64
    /// `syscallno`); its low 32 bits are read.
    pub fn syscall_nr_offset(&self) -> Result<u32> {
        if cfg!(target_arch = "aarch64") {
            self.member_offset("pt_regs", "syscallno")
        } else if cfg!(target_arch = "x86_64") {
            self.member_offset("pt_regs", "orig_ax")
        } else {
            bail!("stapr reads syscall numbers from saved registers on x86-64 and arm64 only")
        }
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if m.name_off != 0 {
                if self.name(m.name_off) == member {
                    return Some(m.bit_offset);
                }
            } else if depth < 8 {
                let inner = self.skip_modifiers(m.type_id);
                if let Some(bits) = self.find_member(inner, member, depth + 1) {
                    return Some(m.bit_offset + bits);
                }
            }
        }
        None
    }

    /// Anonymous members may be wrapped in typedef/const/volatile/type tags.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, KIND_TYPEDEF..=KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built blob: struct outer { int a; union { long b; int c; }; int d; }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0long\0getint\0getptr\0noret\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: long
        push(&[s("long"), KIND_INT << 24, 8, 64]);
        // 3: anonymous union { long b; int c; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("b"), 2, 0]);
        push(&[s("c"), 1, 0]);
        // 4: struct outer { int a; <anon union> at 64 bits; int d at 128 bits; }
        push(&[s("outer"), (KIND_STRUCT << 24) | 3, 24]);
        push(&[s("a"), 1, 0]);
        push(&[0, 3, 64]);
        push(&[s("d"), 1, 128]);
        // 5: a function named "long" (its prototype does not matter here)
        push(&[s("long"), KIND_FUNC << 24, 0]);
        // 6: int (void), 7: getint; 8: int *, 9: int *(void), 10: getptr; 11: void (void),
        // 12: noret; 13: long (void) for a module's function.
        push(&[0, KIND_FUNC_PROTO << 24, 1]);
        push(&[s("getint"), KIND_FUNC << 24, 6]);
        push(&[0, KIND_PTR << 24, 1]);
        push(&[0, KIND_FUNC_PROTO << 24, 8]);
        push(&[s("getptr"), KIND_FUNC << 24, 9]);
        push(&[0, KIND_FUNC_PROTO << 24, 0]);
        push(&[s("noret"), KIND_FUNC << 24, 11]);
        push(&[0, KIND_FUNC_PROTO << 24, 2]);
        header(&types, &strings)
    }

    fn header(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn return_kinds() {
        let base = Btf::parse(&blob()).unwrap();
        assert_eq!(base.func_ret("getint", None), Some(RetKind::Int32));
        assert_eq!(base.func_ret("getptr", None), Some(RetKind::Ptr));
        assert_eq!(base.func_ret("noret", None), Some(RetKind::Void));
        assert_eq!(base.func_ret("nosuch", None), None);
        // A module function whose prototype (long (void)) lives in the base.
        let strings = b"\0modlong\0";
        let mut types = Vec::new();
        for w in [base.strings.len() as u32 + 1, KIND_FUNC << 24, 13] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        let module = Btf::parse_split(&header(&types, strings), &base).unwrap();
        assert_eq!(
            module.func_ret("modlong", Some(&base)),
            Some(RetKind::Int64)
        );
    }

    #[test]
    fn finds_functions_in_base_and_split_btf() {
        let base = Btf::parse(&blob()).unwrap();
        assert_eq!(base.func_id("long"), Some(5));
        assert_eq!(base.func_id("int"), None);
        // A module: one function with its own name, one reusing a base string.
        let strings = b"\0modfn\0";
        let base_len = base.strings.len() as u32;
        let mut types = Vec::new();
        for w in [base_len + 1, KIND_FUNC << 24, 0, 1, KIND_FUNC << 24, 0] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        let module = Btf::parse_split(&header(&types, strings), &base).unwrap();
        assert_eq!(module.func_id("modfn"), Some(14));
        assert_eq!(module.func_id("int"), Some(15));
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 16);
        assert!(btf.member_offset("outer", "zz").is_err());
        assert!(btf.member_offset("inner", "a").is_err());
    }

    /// A type or member the probes need and the kernel lacks is the user's to know: one
    /// line naming it, exit code 2.
    #[test]
    fn a_missing_type_or_member_is_named_for_the_user() {
        let btf = Btf::parse(&blob()).unwrap();
        for (e, names) in [
            (btf.member_offset("pt_regs", "orig_x0"), "struct pt_regs"),
            (
                btf.member_offset("outer", "zz"),
                "member zz in struct outer",
            ),
        ] {
            let e = e.unwrap_err();
            assert!(e.downcast_ref::<super::super::UserError>().is_some(), "{e}");
            assert!(e.to_string().contains(names), "{e}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }
}
