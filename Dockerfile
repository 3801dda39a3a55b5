# syntax=docker/dockerfile:1
# Images of Weir's two programs, each one binary on distroless/cc (glibc, libgcc and
# OpenSSL; no shell, no package manager), running as the distroless `nonroot` user (65532),
# the user the chart and the operator's runtime pods ask for.
#
#   docker build --target weir-operator -t ghcr.io/weir-dev/weir-operator:0.1.0 .
#   docker build --target weir-runtime  -t ghcr.io/weir-dev/weir-runtime:0.1.0 .
#
# Tag them with the workspace version (Cargo.toml): the chart's default tags are its
# appVersion, which a test keeps equal to that version. No container engine is available
# where the project's tests run, so CI does not build these images.

ARG RUST_VERSION=1.89

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build-base
# rdkafka builds its bundled librdkafka with librdkafka's own configure script (make, a C
# compiler, perl) and links OpenSSL; zlib comes from libz-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
# zlib is linked statically (distroless has no libz); OpenSSL stays dynamic, from the
# distroless image, which carries Debian 12's libssl3 as this builder does.
ENV LIBZ_SYS_STATIC=1 CARGO_TERM_COLOR=never
WORKDIR /src
COPY . .

FROM build-base AS build-operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=weir-target-operator \
    cargo build --release --locked -p weir-operator --bin weir-operator \
 && install -D target/release/weir-operator /out/weir-operator

FROM build-base AS build-runtime
# The last step fails the build if the binary needs a shared library that distroless/cc
# does not provide.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=weir-target-runtime \
    cargo build --release --locked -p weir-runtime --bin weir-runtime \
 && install -D target/release/weir-runtime /out/weir-runtime \
 && ! ldd /out/weir-runtime | grep -vE 'linux-vdso|ld-linux|lib(c|m|gcc_s|ssl|crypto)\.so'

FROM gcr.io/distroless/cc-debian12:nonroot AS weir-operator
LABEL org.opencontainers.image.title="weir-operator" \
      org.opencontainers.image.description="Runs Weir StreamJobs on Kubernetes" \
      org.opencontainers.image.source="https://github.com/weir-dev/weir" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-operator /out/weir-operator /usr/local/bin/weir-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weir-operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS weir-runtime
LABEL org.opencontainers.image.title="weir-runtime" \
      org.opencontainers.image.description="The dataflow engine of a Weir StreamJob's pods" \
      org.opencontainers.image.source="https://github.com/weir-dev/weir" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build-runtime /out/weir-runtime /usr/local/bin/weir-runtime
USER 65532:65532
EXPOSE 9249
ENTRYPOINT ["/usr/local/bin/weir-runtime"]
