use super::*;

fn param_count(spec: &ArchSpec) -> usize {
    let (g, init) = build(spec).unwrap();
    let m = tlc_engine::Model::init(g, init, &mut tlc_engine::Rng::new(0)).unwrap();
    m.num_params()
}

#[test]
fn resnet_parameter_counts_match_torchvision() {
    // torchvision.models.resnet18() / resnet34(): 11,689,512 and 21,797,672 parameters.
    assert_eq!(param_count(&ArchSpec::new(Arch::Resnet18)), 11_689_512);
    assert_eq!(param_count(&ArchSpec::new(Arch::Resnet34)), 21_797_672);
    // CIFAR form: the 7x7x3x64 stem becomes 3x3x3x64, 1000 classes become 10.
    assert_eq!(param_count(&ArchSpec::new(Arch::Resnet18Cifar)), 11_173_962);
}

#[test]
fn width_and_channels_options() {
    let spec = ArchSpec {
        width: 0.25,
        in_ch: 1,
        image: [28, 28],
        ..ArchSpec::new(Arch::Resnet18Cifar)
    };
    let (g, _) = build(&spec).unwrap();
    let conv1 = g.node(g.find("conv1").unwrap());
    assert_eq!(conv1.op, Op::Conv2d(ConvSpec::new(1, 16, 3, 1, 1)));
    assert_eq!(g.infer_shapes().unwrap()[g.output()], vec![10]);
    assert_eq!(
        g.infer_shapes().unwrap()[g.find("layer4.1.relu2").unwrap()],
        vec![128, 4, 4]
    );
}

#[test]
fn names_and_specs_round_trip() {
    for a in Arch::ALL {
        assert_eq!(Arch::parse(a.name()).unwrap(), a);
    }
    assert!(Arch::parse("resnet19")
        .unwrap_err()
        .to_string()
        .contains("resnet18-cifar"));
    let spec = ArchSpec {
        width: 0.5,
        ..ArchSpec::new(Arch::Resnet34)
    };
    assert_eq!(ArchSpec::from_json(&spec.to_json()).unwrap(), spec);
    assert!(build(&ArchSpec {
        width: 0.0,
        ..spec.clone()
    })
    .is_err());
    assert!(build(&ArchSpec { classes: 0, ..spec }).is_err());
}
