//! Prints the `WebSocketGateway` CRD as YAML (the checked-in copy must match).

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", ringway_crds::crd_yaml()?);
    Ok(())
}
