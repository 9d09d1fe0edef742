use ringway_dataplane_api::v1;

use super::*;

/// `examples/<name>`, found from the crate at run time.
fn example(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests"),
    )
    .join("../examples")
    .join(name)
}

#[test]
fn the_example_config_loads() {
    let config =
        Config::load(&example("standalone.yaml")).expect("examples/standalone.yaml is valid");
    assert_eq!(config.routes[0].backends.len(), 2);
    assert_eq!(config.connections.max_connections, 9_900);
}

#[test]
fn the_example_shard_config_loads() {
    let config = Config::load(&example("shard.yaml")).expect("examples/shard.yaml is valid");
    let shard = config.shard.expect("a shard section");
    assert!(config.routes.is_empty());
    assert_eq!(shard.control.address.port(), 7443);
    assert_eq!(shard.peer.address.port(), 7000);
    let both = "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query, name: k}, backends: [127.0.0.1:1]}]\nshard: {peer: {address: 127.0.0.1:0, tokenFile: t}, control: {address: 127.0.0.1:0, certFile: c, keyFile: k, clientCaFile: ca}}\n";
    let err = Config::from_yaml(both).unwrap_err().to_string();
    assert!(
        err.contains("a shard takes its routes from the operator's snapshots"),
        "{err}"
    );
}

#[test]
fn typos_and_bad_values_are_named() {
    let base = "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query, name: k}, backends: [127.0.0.1:1]}]\n";
    let err = |extra: &str| {
        Config::from_yaml(&format!("{base}{extra}"))
            .unwrap_err()
            .to_string()
    };
    assert!(err("conections: {}").contains("unknown field `conections`"));
    assert!(err("connections: {maxFrameBytes: 10}").contains("maxFrameBytes"));
    assert!(err("drain: {windowSeconds: -1}").contains("drain.windowSeconds"));
    let no_name = Config::from_yaml("listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Header}, backends: [x:1]}]")
        .unwrap_err()
        .to_string();
    assert!(
        no_name.contains("routes[0] (a).key: Header takes `name`"),
        "{no_name}"
    );
}

#[test]
fn route_problems_name_the_files_keys() {
    let routes = |routes: &str| {
        Config::from_yaml(&format!(
            "listener: {{address: 127.0.0.1:0}}\nroutes: [{routes}]\n"
        ))
        .unwrap_err()
        .to_string()
    };
    let route = |name: &str, prefix: &str, key: &str| {
        format!("{{name: {name}, pathPrefix: '{prefix}', key: {key}, backends: [127.0.0.1:1]}}")
    };
    let query = "{source: Query, name: k}";
    for (expected, config) in [
        (
            "routes[0] (a).pathPrefix: must start with '/'",
            routes(&route("a", "chat", query)),
        ),
        (
            "routes[1] (b).pathPrefix: another route has this prefix",
            routes(&format!(
                "{}, {}",
                route("a", "/", query),
                route("b", "/", query)
            )),
        ),
        (
            "routes[1] (a).name: another route has this name",
            routes(&format!(
                "{}, {}",
                route("a", "/", query),
                route("a", "/b", query)
            )),
        ),
        (
            "routes[0] (a).key.name: must not be empty",
            routes(&route("a", "/", "{source: Cookie, name: ''}")),
        ),
        (
            "routes[0] (a).key: PathSegment takes `segment` and no `name`",
            routes(&route(
                "a",
                "/",
                "{source: PathSegment, name: x, segment: 1}",
            )),
        ),
        ("routes: at least one route is needed", routes("")),
    ] {
        assert!(
            config.starts_with(expected),
            "expected {expected:?}, got {config:?}"
        );
    }
}

#[test]
fn a_standalone_config_compiles_into_an_epoch_0_snapshot() {
    let config = Config::from_yaml(
        "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: PathSegment, segment: 1}, missingKey: Random, backends: [localhost:9001, localhost:9001, 127.0.0.1:9002]}]\n",
    )
    .expect("valid");
    let snapshot = config.snapshot().expect("localhost resolves");
    assert_eq!(snapshot.epoch, 0);
    assert_eq!(snapshot.routes[0].path_prefix, "/");
    assert_eq!(
        snapshot.routes[0].missing_key,
        v1::MissingKeyPolicy::Random as i32
    );
    let stable = &snapshot.versions[0];
    assert!(stable.shards.is_empty());
    let backends = &stable.backends[0].backends;
    assert_eq!(
        backends.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["localhost:9001", "127.0.0.1:9002"],
        "named as written, once each"
    );
    assert!(backends[0].address.ends_with(":9001"));
    assert_eq!(snapshot.limits, None, "the config's limits are the base");
    let unresolvable = Config::from_yaml(
        "listener: {address: 127.0.0.1:0}\nroutes: [{name: a, key: {source: Query, name: k}, backends: [no-such-host.invalid:1]}]\n",
    )
    .expect("parses: backends resolve when the config compiles")
    .snapshot()
    .unwrap_err()
    .to_string();
    assert_eq!(
        unresolvable,
        "route a: backend \"no-such-host.invalid:1\" is not a host:port that resolves"
    );
}
