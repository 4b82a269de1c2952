"""Guest OS identifiers of VMware (VMX ``guestOS``, OVF ``vmw:osType``) and of OVF/CIM.

Assessment and manifests choose preferences by family/distro/version, so both kinds of
identifier are turned into one :class:`~migrate.core.model.GuestOS`.  VMware writes the same
OS two ways: ``rhel7-64`` in a ``.vmx`` and ``rhel7_64Guest`` in the vSphere API and OVF;
:func:`normalize` folds both to one key.  VMware's id is more precise than the CIM number
(VMware exports Windows 10 as CIM 113 "Windows 8"), so it wins when both are present.
"""

from __future__ import annotations

import re

from migrate.core.model import GuestOS

# Windows ids (normalized) -> (human name, version)
_WINDOWS: dict[str, tuple[str, str]] = {
    "win31": ("Microsoft Windows 3.1", "3.1"),
    "win95": ("Microsoft Windows 95", "95"),
    "win98": ("Microsoft Windows 98", "98"),
    "winme": ("Microsoft Windows Me", "me"),
    "winnt": ("Microsoft Windows NT", "nt"),
    "win2000": ("Microsoft Windows 2000", "2000"),
    "win2000pro": ("Microsoft Windows 2000 Professional", "2000"),
    "win2000serv": ("Microsoft Windows 2000 Server", "2000"),
    "win2000advserv": ("Microsoft Windows 2000 Advanced Server", "2000"),
    "winxphome": ("Microsoft Windows XP Home Edition", "xp"),
    "winxppro": ("Microsoft Windows XP Professional", "xp"),
    "winxppro64": ("Microsoft Windows XP Professional (64-bit)", "xp"),
    "winnetweb": ("Microsoft Windows Server 2003 Web Edition", "2003"),
    "winnetstandard": ("Microsoft Windows Server 2003 Standard Edition", "2003"),
    "winnetstandard64": ("Microsoft Windows Server 2003 Standard Edition (64-bit)", "2003"),
    "winnetenterprise": ("Microsoft Windows Server 2003 Enterprise Edition", "2003"),
    "winnetenterprise64": ("Microsoft Windows Server 2003 Enterprise Edition (64-bit)", "2003"),
    "winnetdatacenter": ("Microsoft Windows Server 2003 Datacenter Edition", "2003"),
    "winnetdatacenter64": ("Microsoft Windows Server 2003 Datacenter Edition (64-bit)", "2003"),
    "winnetbusiness": ("Microsoft Windows Small Business Server 2003", "2003"),
    "winlonghorn": ("Microsoft Windows Server 2008", "2008"),
    "winlonghorn64": ("Microsoft Windows Server 2008 (64-bit)", "2008"),
    "longhorn": ("Microsoft Windows Server 2008", "2008"),
    "longhorn64": ("Microsoft Windows Server 2008 (64-bit)", "2008"),
    "winvista": ("Microsoft Windows Vista", "vista"),
    "winvista64": ("Microsoft Windows Vista (64-bit)", "vista"),
    "windows7": ("Microsoft Windows 7", "7"),
    "windows764": ("Microsoft Windows 7 (64-bit)", "7"),
    "windows7srv64": ("Microsoft Windows Server 2008 R2 (64-bit)", "2008r2"),
    "windows8": ("Microsoft Windows 8", "8"),
    "windows864": ("Microsoft Windows 8 (64-bit)", "8"),
    "windows8srv64": ("Microsoft Windows Server 2012 (64-bit)", "2012"),
    "windows9": ("Microsoft Windows 10", "10"),
    "windows964": ("Microsoft Windows 10 (64-bit)", "10"),
    "windows9srv64": ("Microsoft Windows Server 2016 (64-bit)", "2016"),
    "windows2019srv64": ("Microsoft Windows Server 2019 (64-bit)", "2019"),
    "windows2019srvnext64": ("Microsoft Windows Server 2022 (64-bit)", "2022"),
    "windows2022srvnext64": ("Microsoft Windows Server 2025 (64-bit)", "2025"),
    "windows1164": ("Microsoft Windows 11 (64-bit)", "11"),
    "windows1264": ("Microsoft Windows 12 (64-bit)", "12"),
    "windowshyperv": ("Microsoft Hyper-V Server", "hyperv"),
}

# Linux and others: normalized prefix -> (distro, family, human name stem)
_PREFIXES: list[tuple[str, str, str, str]] = [
    ("rhel", "rhel", "linux", "Red Hat Enterprise Linux"),
    ("redhat", "rhel", "linux", "Red Hat Linux"),
    ("centos", "centos", "linux", "CentOS"),
    ("oraclelinux", "ol", "linux", "Oracle Linux"),
    ("rockylinux", "rocky", "linux", "Rocky Linux"),
    ("almalinux", "almalinux", "linux", "AlmaLinux"),
    ("sles", "sles", "linux", "SUSE Linux Enterprise Server"),
    ("suse", "suse", "linux", "SUSE Linux"),
    ("opensuse", "opensuse", "linux", "openSUSE"),
    ("ubuntu", "ubuntu", "linux", "Ubuntu Linux"),
    ("debian", "debian", "linux", "Debian GNU/Linux"),
    ("fedora", "fedora", "linux", "Fedora"),
    ("amazonlinux", "amazonlinux", "linux", "Amazon Linux"),
    ("vmwarephoton", "photon", "linux", "VMware Photon OS"),
    ("photon", "photon", "linux", "VMware Photon OS"),
    ("coreos", "coreos", "linux", "CoreOS"),
    ("asianux", "asianux", "linux", "Asianux"),
    ("mandrake", "mandriva", "linux", "Mandrake Linux"),
    ("mandriva", "mandriva", "linux", "Mandriva Linux"),
    ("turbolinux", "turbolinux", "linux", "Turbolinux"),
    ("miraclelinux", "miraclelinux", "linux", "MIRACLE LINUX"),
    ("nld", "nld", "linux", "Novell Linux Desktop"),
    ("oes", "oes", "linux", "Open Enterprise Server"),
    ("sjds", "sjds", "linux", "Sun Java Desktop System"),
    ("genericlinux", "linux", "linux", "Generic Linux"),
    ("other24xlinux", "linux", "linux", "Other 2.4.x Linux"),
    ("other26xlinux", "linux", "linux", "Other 2.6.x Linux"),
    ("other3xlinux", "linux", "linux", "Other 3.x or later Linux"),
    ("other4xlinux", "linux", "linux", "Other 4.x or later Linux"),
    ("other5xlinux", "linux", "linux", "Other 5.x or later Linux"),
    ("other6xlinux", "linux", "linux", "Other 6.x or later Linux"),
    ("otherlinux", "linux", "linux", "Other Linux"),
    ("freebsd", "freebsd", "bsd", "FreeBSD"),
    ("solaris", "solaris", "solaris", "Oracle Solaris"),
    ("opensolaris", "opensolaris", "solaris", "OpenSolaris"),
    ("darwin", "macos", "other", "Apple macOS"),
    ("vmkernel", "esxi", "other", "VMware ESXi"),
    ("netware", "netware", "other", "Novell NetWare"),
    ("openserver", "sco", "other", "SCO OpenServer"),
    ("unixware", "sco", "other", "SCO UnixWare"),
    ("ecomstation", "ecomstation", "other", "eComStation"),
    ("os2", "os2", "other", "IBM OS/2"),
    ("dos", "dos", "other", "MS-DOS"),
    ("other", None, "other", "Other"),  # type: ignore[list-item]
]


def normalize(os_id: str) -> str:
    """Fold ``rhel7-64``, ``rhel7_64Guest`` and ``RHEL7-64`` to one key: ``rhel764``."""
    key = os_id.strip().lower()
    key = key.removesuffix("guest")
    key = key.replace("server", "srv")
    key = re.sub(r"[-_]?64$", "64", key)
    return key


def _is64(os_id: str) -> bool:
    low = os_id.lower().removesuffix("guest")
    return low.endswith("64")


def from_vmware(os_id: str | None) -> GuestOS | None:
    """A GuestOS for a VMX ``guestOS`` or OVF ``vmw:osType`` value; None when absent."""
    if not os_id or not os_id.strip():
        return None
    os_id = os_id.strip()
    key = normalize(os_id)
    bits = " (64-bit)" if _is64(os_id) else ""
    if key in _WINDOWS:
        name, version = _WINDOWS[key]
        return GuestOS(id=os_id, name=name, family="windows", version=version, distro="win")
    if key.startswith("win"):
        return GuestOS(id=os_id, name=f"Microsoft Windows{bits}", family="windows", distro="win")
    for prefix, distro, family, stem in _PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix):].removesuffix("64")
            version = rest if re.fullmatch(r"\d+(\.\d+)?", rest) else None
            if prefix.startswith("other") and prefix.endswith("linux"):
                version = None
            name = f"{stem} {version}{bits}" if version else f"{stem}{bits}"
            return GuestOS(id=os_id, name=name, family=family, version=version, distro=distro)
    return GuestOS(id=os_id, name=os_id, family="other")


# CIM_OperatingSystem.OsType (DMTF) -> (name, family, distro, version)
_CIM: dict[int, tuple[str, str, str | None, str | None]] = {
    0: ("Unknown", "other", None, None),
    1: ("Other", "other", None, None),
    2: ("MacOS", "other", "macos", None),
    8: ("HP-UX", "other", "hpux", None),
    9: ("AIX", "other", "aix", None),
    12: ("OS/2", "other", "os2", None),
    14: ("MS-DOS", "other", "dos", None),
    15: ("Microsoft Windows 3.x", "windows", "win", "3.1"),
    16: ("Microsoft Windows 95", "windows", "win", "95"),
    17: ("Microsoft Windows 98", "windows", "win", "98"),
    18: ("Microsoft Windows NT", "windows", "win", "nt"),
    19: ("Microsoft Windows CE", "windows", "win", "ce"),
    21: ("Novell NetWare", "other", "netware", None),
    25: ("SCO UnixWare", "other", "sco", None),
    26: ("SCO OpenServer", "other", "sco", None),
    29: ("Solaris", "solaris", "solaris", None),
    30: ("SunOS", "solaris", "solaris", None),
    36: ("Linux", "linux", "linux", None),
    41: ("BSD UNIX", "bsd", None, None),
    42: ("FreeBSD", "bsd", "freebsd", None),
    43: ("NetBSD", "bsd", "netbsd", None),
    58: ("Microsoft Windows 2000", "windows", "win", "2000"),
    63: ("Microsoft Windows Me", "windows", "win", "me"),
    65: ("OpenBSD", "bsd", "openbsd", None),
    67: ("Microsoft Windows XP", "windows", "win", "xp"),
    69: ("Microsoft Windows Server 2003", "windows", "win", "2003"),
    70: ("Microsoft Windows Server 2003 (64-bit)", "windows", "win", "2003"),
    71: ("Microsoft Windows XP (64-bit)", "windows", "win", "xp"),
    72: ("Microsoft Windows XP Embedded", "windows", "win", "xp"),
    73: ("Microsoft Windows Vista", "windows", "win", "vista"),
    74: ("Microsoft Windows Vista (64-bit)", "windows", "win", "vista"),
    75: ("Microsoft Windows Embedded for Point of Service", "windows", "win", None),
    76: ("Microsoft Windows Server 2008", "windows", "win", "2008"),
    77: ("Microsoft Windows Server 2008 (64-bit)", "windows", "win", "2008"),
    78: ("FreeBSD (64-bit)", "bsd", "freebsd", None),
    79: ("Red Hat Enterprise Linux", "linux", "rhel", None),
    80: ("Red Hat Enterprise Linux (64-bit)", "linux", "rhel", None),
    81: ("Solaris (64-bit)", "solaris", "solaris", None),
    82: ("SUSE Linux", "linux", "suse", None),
    83: ("SUSE Linux (64-bit)", "linux", "suse", None),
    84: ("SUSE Linux Enterprise Server", "linux", "sles", None),
    85: ("SUSE Linux Enterprise Server (64-bit)", "linux", "sles", None),
    86: ("Novell Open Enterprise Server", "linux", "oes", None),
    87: ("Novell Linux Desktop", "linux", "nld", None),
    88: ("Sun Java Desktop System", "linux", "sjds", None),
    89: ("Mandriva Linux", "linux", "mandriva", None),
    90: ("Mandriva Linux (64-bit)", "linux", "mandriva", None),
    91: ("Turbolinux", "linux", "turbolinux", None),
    92: ("Turbolinux (64-bit)", "linux", "turbolinux", None),
    93: ("Ubuntu Linux", "linux", "ubuntu", None),
    94: ("Ubuntu Linux (64-bit)", "linux", "ubuntu", None),
    95: ("Debian GNU/Linux", "linux", "debian", None),
    96: ("Debian GNU/Linux (64-bit)", "linux", "debian", None),
    97: ("Linux 2.4.x", "linux", "linux", None),
    98: ("Linux 2.4.x (64-bit)", "linux", "linux", None),
    99: ("Linux 2.6.x", "linux", "linux", None),
    100: ("Linux 2.6.x (64-bit)", "linux", "linux", None),
    101: ("Linux (64-bit)", "linux", "linux", None),
    102: ("Other (64-bit)", "other", None, None),
    103: ("Microsoft Windows Server 2008 R2", "windows", "win", "2008r2"),
    104: ("VMware ESXi", "other", "esxi", None),
    105: ("Microsoft Windows 7", "windows", "win", "7"),
    106: ("CentOS", "linux", "centos", None),
    107: ("CentOS (64-bit)", "linux", "centos", None),
    108: ("Oracle Linux", "linux", "ol", None),
    109: ("Oracle Linux (64-bit)", "linux", "ol", None),
    110: ("eComStation", "other", "ecomstation", None),
    111: ("Microsoft Windows Server 2011", "windows", "win", "2011"),
    112: ("Microsoft Windows Server 2012", "windows", "win", "2012"),
    113: ("Microsoft Windows 8", "windows", "win", "8"),
    114: ("Microsoft Windows 8 (64-bit)", "windows", "win", "8"),
    115: ("Microsoft Windows Server 2012 R2", "windows", "win", "2012r2"),
}

CIM_64BIT = {70, 71, 74, 77, 78, 80, 81, 83, 85, 90, 92, 94, 96, 98, 100, 101, 102, 103, 107,
             109, 112, 114, 115}


def from_cim(code: int, description: str | None = None, version: str | None = None) -> GuestOS:
    """A GuestOS for an OVF OperatingSystemSection ``ovf:id`` (a CIM OsType number)."""
    name, family, distro, ver = _CIM.get(code, (description or f"CIM OS type {code}", "other",
                                              None, None))
    if description and code in (0, 1, 36, 102):
        name = description  # "Other" says little; the exporter's description says more
    return GuestOS(id=f"cim:{code}", name=name, family=family, distro=distro,
                   version=version or ver)


def guest_from_ovf(cim_id: str | None, vmw_os_type: str | None, description: str | None,
                   version: str | None) -> GuestOS | None:
    """Combine an OperatingSystemSection's attributes; VMware's osType is the sharper one."""
    version = (version or "").strip() or None
    description = (description or "").strip() or None
    guest = from_vmware(vmw_os_type)
    if guest is not None:
        if version and not guest.version:
            guest.version = version
        return guest
    if cim_id is None or not cim_id.strip().lstrip("-").isdigit():
        if description:
            return GuestOS(name=description, family="other", version=version)
        return None
    return from_cim(int(cim_id.strip()), description, version)


def is_64bit(guest: GuestOS | None) -> bool | None:
    """Whether a guest id says 64-bit; None when it does not say."""
    if guest is None or guest.id is None:
        return None
    if guest.id.startswith("cim:"):
        code = int(guest.id[4:])
        return code in CIM_64BIT or None
    return _is64(guest.id)
