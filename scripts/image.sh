#!/usr/bin/env bash
# Builds the Strait image with podman or buildah (docker where its engine
# runs), prints its size, extracts the binary and runs `strait --version`.
# `scripts/test.sh` (and so CI) runs it last; it builds the release
# profile, several minutes on two cores.
#
#   scripts/image.sh                         # tag localhost/strait:<version>
#   STRAIT_IMAGE=registry.example/strait:1 scripts/image.sh
#   STRAIT_IMAGE_REQUIRED=1 scripts/image.sh # fail when no engine is installed
#
# The Containerfile's two stages build on Debian's Rust image and run on
# distroless's cc image. When those base images are not present locally
# (no registry to pull them from, as on the CI machines), the script builds
# the same runtime layout FROM scratch instead: the host's release build of
# `strait`, exactly the shared libraries `ldd` lists, and a passwd entry for
# user 65532. STRAIT_IMAGE_MODE=containerfile or =host picks one.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${STRAIT_IMAGE:-localhost/strait:$version}
mode=${STRAIT_IMAGE_MODE:-auto}
rust_image=docker.io/library/rust:1-bookworm
runtime_image=gcr.io/distroless/cc-debian12:nonroot

engine=""
for e in podman buildah; do
  if command -v "$e" >/dev/null 2>&1; then engine=$e; break; fi
done
if [ -z "$engine" ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
fi
if [ -z "$engine" ]; then
  echo "image.sh: neither podman nor buildah is installed (nor a running docker engine); not building the image (apt-get install podman)"
  [ "${STRAIT_IMAGE_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
fi

has_image() {
  case $engine in
    podman) podman image exists "$1" ;;
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
  esac
}
build() { # context containerfile
  case $engine in
    buildah) buildah bud --layers -t "$image" -f "$2" "$1" ;;
    *) "$engine" build -t "$image" -f "$2" "$1" ;;
  esac
}

if [ "$mode" = auto ]; then
  if has_image "$rust_image" && has_image "$runtime_image"; then mode=containerfile; else mode=host; fi
fi
echo "==> building $image with $engine ($mode)"
case $mode in
  containerfile)
    build . Containerfile
    ;;
  host)
    echo "    (base images $rust_image and $runtime_image are not present locally; building the same layout FROM scratch from the host's release build)"
    cargo build --locked --release -p strait-cli
    bin=${CARGO_TARGET_DIR:-target}/release/strait
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/root/usr/local/bin" "$ctx/root/etc" "$ctx/root/var/run/strait" "$ctx/root/tmp"
    install -m 0755 "$bin" "$ctx/root/usr/local/bin/strait"
    # The release profile keeps line tables; the image keeps only symbols.
    if command -v strip >/dev/null 2>&1; then strip --strip-debug "$ctx/root/usr/local/bin/strait"; fi
    # Exactly the libraries the binary links, at the paths it looks for them.
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
      mkdir -p "$ctx/root$(dirname "$lib")"
      cp -L "$lib" "$ctx/root$lib"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/root/etc/group"
    cat >"$ctx/Containerfile" <<'CF'
FROM scratch
COPY root/ /
WORKDIR /var/run/strait
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/strait"]
CF
    build "$ctx" "$ctx/Containerfile"
    ;;
  *)
    echo "image.sh: STRAIT_IMAGE_MODE must be auto, containerfile or host (got $mode)" >&2
    exit 2
    ;;
esac

case $engine in
  buildah) echo "==> $image: $(buildah images --format '{{.Size}}' "$image" | head -1)" ;;
  *)
    size=$("$engine" image inspect --format '{{.Size}}' "$image")
    echo "==> $image: $size bytes ($((size / 1024 / 1024)) MiB)"
    ;;
esac

# Containers cannot start on every machine; extract the binary and run it
# on the host instead.
out=$(mktemp -d)
case $engine in
  buildah)
    ctr=$(buildah from "$image")
    cp "$(buildah mount "$ctr")/usr/local/bin/strait" "$out/strait"
    buildah rm "$ctr" >/dev/null
    ;;
  *)
    cid=$("$engine" create "$image" --version)
    "$engine" cp "$cid:/usr/local/bin/strait" "$out/strait"
    "$engine" rm "$cid" >/dev/null
    ;;
esac
echo "==> $("$out/strait" --version) (extracted from the image)"
rm -rf "$out"
