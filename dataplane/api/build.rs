//! Compiles `proto/ringway/control/v1/control.proto` with the `protoc` that
//! the `protoc-bin-vendored` crate ships, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &["proto/ringway/control/v1/control.proto"],
            &["proto"],
        )?;
    Ok(())
}
