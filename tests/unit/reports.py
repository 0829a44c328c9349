"""Reports built in the test, for renderer and policy tests that must not depend on the analysers."""

from __future__ import annotations

from imgaudit.report import (
    EntrypointVerdict,
    FileSize,
    Finding,
    ImageInfo,
    Incomplete,
    LayerInfo,
    PlatformInfo,
    Report,
    Severity,
    SizeInfo,
)

DIGEST = "sha256:" + "ab" * 32


def layer(index: int, size: int, created_by: str) -> LayerInfo:
    return LayerInfo(index=index, digest=None, diff_id="sha256:" + f"{index:02x}" * 32, compressed_bytes=size // 3,
                     uncompressed_bytes=size, files_added=3, created_by=created_by)


def size_info(**overrides: object) -> SizeInfo:
    size = SizeInfo(
        compressed_bytes=40_000_000, uncompressed_bytes=120_000_000, final_bytes=100_000_000, file_count=1234,
        efficiency=0.9, wasted_bytes=12_000_000, reclaimable_bytes=8_000_000,
        layers=[layer(0, 80_000_000, "/bin/sh -c #(nop) ADD file:0123abcd in / "),
                layer(1, 30_000_000, "RUN /bin/sh -c apt-get update && apt-get install -y curl # buildkit"),
                layer(2, 10_000_000, "COPY target/release/app /usr/local/bin/app # buildkit")],
        top_files=[FileSize("/usr/local/bin/app", 9_000_000, 2)], user_wasted_percent=0.3,
    )
    for key, value in overrides.items():
        setattr(size, key, value)
    return size


def findings() -> list[Finding]:
    return [
        Finding("missing-interpreter", Severity.ERROR,
                "exec /usr/local/bin/app: no such file or directory (/lib64/ld-linux-x86-64.so.2 is not in the image)",
                path="/usr/local/bin/app", layer=2,
                fix="build for musl (x86_64-unknown-linux-musl) or use a glibc runtime image"),
        Finding("no-ca-certificates", Severity.WARNING, "app links OpenSSL but the image has no CA bundle",
                path="/usr/local/bin/app", layer=2, fix="install ca-certificates"),
        Finding("apt-lists", Severity.INFO, "apt package lists left in the image", path="/var/lib/apt/lists",
                layer=1, fix="rm -rf /var/lib/apt/lists/* in the same RUN", bytes=20_000_000),
        # Untrusted names: markup, a mention, a pipe, a backtick, a newline and an undecodable byte.
        Finding("elf-unreadable", Severity.WARNING, "cannot parse <script>@octocat | `x`\nnext",
                path="/opt/we|rd `name`\n\udcff<b>", layer=1),
    ]


def report(*, with_findings: bool = True, size: SizeInfo | None = None, incomplete: bool = False) -> Report:
    rep = Report(
        image=ImageInfo(reference="registry.example/team/app:1.2", source="registry", manifest_digest=DIGEST,
                        config_digest="sha256:" + "cd" * 32, platform=PlatformInfo("linux", "amd64"),
                        entrypoint=["/usr/local/bin/app"], cmd=["serve"]),
        entrypoint=EntrypointVerdict(argv=["/usr/local/bin/app", "serve"], path="/usr/local/bin/app", verdict="fail",
                                     failure="missing-interpreter",
                                     message="exec /usr/local/bin/app: no such file or directory",
                                     fix="build for musl or use a glibc runtime")
        if with_findings else EntrypointVerdict(argv=["/usr/local/bin/app", "serve"], path="/usr/local/bin/app",
                                                verdict="ok"),
        size=size or size_info(),
        findings=findings() if with_findings else [],
    )
    if incomplete:
        rep.incomplete.append(Incomplete("layer 1 entry /dev/weird", "device node skipped"))
    return rep
