use super::*;
use tlc_engine::graph::PoolSpec;

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

fn shape_of(g: &Graph, node: &str) -> Vec<usize> {
    let id = g.find(node).unwrap_or_else(|| panic!("no node `{node}`"));
    g.infer_shapes().unwrap()[id].clone()
}

fn count_acts(g: &Graph, kind: ActKind) -> usize {
    g.activations()
        .into_iter()
        .filter(|&i| g.node(i).op == Op::Activation { act: kind })
        .count()
}

#[test]
fn vgg_and_mobilenet_parameter_counts_match_torchvision() {
    // torchvision.models.vgg16_bn() / mobilenet_v2().
    assert_eq!(param_count(&ArchSpec::new(Arch::Vgg16Bn)), 138_365_992);
    assert_eq!(param_count(&ArchSpec::new(Arch::MobilenetV2)), 3_504_872);
    // CIFAR VGG: torchvision's features (14,723,136) + 512-4096-4096-10.
    assert_eq!(param_count(&ArchSpec::new(Arch::Vgg16BnCifar)), 33_646_666);
}

#[test]
fn mobilenet_width_rounds_like_torchvision() {
    // mobilenet_v2(width_mult=w): parameters, the stem width, the output widths of blocks
    // 1, 2, 4, 7, 11, 14, 17 (one per stage) and the last channel count.
    let table: [(f32, usize, usize, [usize; 7], usize); 5] = [
        (0.35, 1_677_128, 16, [8, 8, 16, 24, 32, 56, 112], 1280),
        (0.5, 1_968_680, 16, [8, 16, 16, 32, 48, 80, 160], 1280),
        (0.75, 2_636_424, 24, [16, 24, 24, 48, 72, 120, 240], 1280),
        (1.3, 5_386_792, 40, [24, 32, 40, 80, 128, 208, 416], 1664),
        (1.4, 6_108_776, 48, [24, 32, 48, 88, 136, 224, 448], 1792),
    ];
    for (width, params, stem, stages, last) in table {
        let spec = ArchSpec {
            width,
            ..ArchSpec::new(Arch::MobilenetV2)
        };
        assert_eq!(param_count(&spec), params, "width {width}");
        let (g, _) = build(&spec).unwrap();
        assert_eq!(shape_of(&g, "features.0.2")[0], stem, "width {width}");
        for (block, want) in [1, 2, 4, 7, 11, 14, 17].iter().zip(stages) {
            let bn = if *block == 1 { "conv.2" } else { "conv.3" };
            let got = shape_of(&g, &format!("features.{block}.{bn}"))[0];
            assert_eq!(got, want, "width {width}, block {block}");
        }
        assert_eq!(shape_of(&g, "flatten"), vec![last], "width {width}");
    }
}

#[test]
fn vgg_layout_and_shapes() {
    let (g, init) = build(&ArchSpec::new(Arch::Vgg16Bn)).unwrap();
    assert_eq!(init, LinearInit::Normal(0.01));
    // Convs at torchvision's indices of cfg D with batch norm; pools at 6, 13, 23, 33, 43.
    let convs: Vec<&str> = g
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::Conv2d(_)))
        .map(|n| n.name.as_str())
        .collect();
    let want: Vec<String> = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
        .iter()
        .map(|i| format!("features.{i}"))
        .collect();
    assert_eq!(convs, want);
    for i in [6, 13, 23, 33, 43] {
        let n = g.node(g.find(&format!("features.{i}")).unwrap());
        assert_eq!(n.op, Op::MaxPool(PoolSpec::new(2, 2, 0)));
    }
    assert_eq!(
        g.node(g.find("features.40").unwrap()).op,
        Op::Conv2d(ConvSpec::new(512, 512, 3, 1, 1).with_bias(true))
    );
    assert_eq!(count_acts(&g, ActKind::Relu), 15);
    assert_eq!(shape_of(&g, "features.43"), vec![512, 7, 7]);
    assert_eq!(shape_of(&g, "classifier.0"), vec![4096]);
    assert_eq!(shape_of(&g, "classifier.6"), vec![1000]);
    // At 32x32 the features end at 1x1 and the adaptive pool repeats it to 7x7.
    let small = ArchSpec {
        image: [32, 32],
        ..ArchSpec::new(Arch::Vgg16Bn)
    };
    let (g, _) = build(&small).unwrap();
    assert_eq!(shape_of(&g, "features.43"), vec![512, 1, 1]);
    assert_eq!(shape_of(&g, "avgpool"), vec![512, 7, 7]);
    // Five halvings do not fit 16x16: an error naming the model and the input.
    let err = build(&ArchSpec {
        image: [16, 16],
        ..small
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("vgg16-bn") && err.contains("3x16x16"), "{err}");
}

#[test]
fn vgg_cifar_form_and_options() {
    let (g, _) = build(&ArchSpec::new(Arch::Vgg16BnCifar)).unwrap();
    assert_eq!(shape_of(&g, "features.43"), vec![512, 1, 1]);
    assert_eq!(shape_of(&g, "flatten"), vec![512]);
    let at224 = ArchSpec {
        image: [224, 224],
        ..ArchSpec::new(Arch::Vgg16BnCifar)
    };
    let (g, _) = build(&at224).unwrap();
    assert_eq!(shape_of(&g, "avgpool"), vec![512, 1, 1]);
    assert_eq!(shape_of(&g, "classifier.6"), vec![10]);
    // --width scales the convolutions and the classifier's hidden width alike.
    let spec = ArchSpec {
        width: 0.25,
        in_ch: 1,
        classes: 7,
        ..ArchSpec::new(Arch::Vgg16BnCifar)
    };
    let (g, _) = build(&spec).unwrap();
    assert_eq!(
        g.node(g.find("features.0").unwrap()).op,
        Op::Conv2d(ConvSpec::new(1, 16, 3, 1, 1).with_bias(true))
    );
    let fc = |name: &str| match &g.node(g.find(name).unwrap()).op {
        Op::Linear(l) => (l.in_f, l.out_f),
        op => panic!("{name} is {}", op.kind_name()),
    };
    assert_eq!(fc("classifier.0"), (128, 1024));
    assert_eq!(fc("classifier.3"), (1024, 1024));
    assert_eq!(fc("classifier.6"), (1024, 7));
    assert_eq!(shape_of(&g, "features.43"), vec![128, 1, 1]);
    // 28 -> 14 -> 7 -> 3 -> 1: a fifth 2x2 pool does not fit (nor does it in PyTorch).
    assert!(build(&ArchSpec {
        image: [28, 28],
        ..spec
    })
    .is_err());
}

#[test]
fn mobilenet_layout_and_shapes() {
    let (g, init) = build(&ArchSpec::new(Arch::MobilenetV2)).unwrap();
    assert_eq!(init, LinearInit::Normal(0.01));
    assert_eq!(count_acts(&g, ActKind::Relu6), 35);
    // t = 1: depthwise ConvBNReLU6 then the projection; t = 6: expand, depthwise, projection.
    let op = |name: &str| g.node(g.find(name).unwrap()).op.clone();
    assert_eq!(
        op("features.1.conv.0.0"),
        Op::Conv2d(ConvSpec::new(32, 32, 3, 1, 1).groups(32))
    );
    assert_eq!(
        op("features.1.conv.1"),
        Op::Conv2d(ConvSpec::new(32, 16, 1, 1, 0))
    );
    assert!(matches!(op("features.1.conv.2"), Op::BatchNorm(_)));
    assert_eq!(
        op("features.2.conv.0.0"),
        Op::Conv2d(ConvSpec::new(16, 96, 1, 1, 0))
    );
    assert_eq!(
        op("features.2.conv.1.0"),
        Op::Conv2d(ConvSpec::new(96, 96, 3, 2, 1).groups(96))
    );
    assert_eq!(
        op("features.2.conv.2"),
        Op::Conv2d(ConvSpec::new(96, 24, 1, 1, 0))
    );
    assert!(matches!(op("features.2.conv.3"), Op::BatchNorm(_)));
    // Residual joins: stride 1 and equal widths only (blocks 3, 5, 6, 8-10, 12, 13, 15, 16).
    let adds: Vec<&str> = g
        .nodes()
        .iter()
        .filter(|n| n.op == Op::Add)
        .map(|n| n.name.as_str())
        .collect();
    let want: Vec<String> = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
        .iter()
        .map(|i| format!("features.{i}.add"))
        .collect();
    assert_eq!(adds, want);
    let add = g.node(g.find("features.3.add").unwrap());
    assert_eq!(
        g.node(add.inputs[1]).name,
        "features.2.conv.3",
        "the shortcut is the block's input"
    );
    assert_eq!(shape_of(&g, "features.18.2"), vec![1280, 7, 7]);
    assert_eq!(shape_of(&g, "classifier.1"), vec![1000]);
    // At 32x32 the five stride-2 stages end at 1x1.
    let small = ArchSpec {
        image: [32, 32],
        in_ch: 1,
        classes: 7,
        width: 0.5,
        ..ArchSpec::new(Arch::MobilenetV2)
    };
    let (g, _) = build(&small).unwrap();
    assert_eq!(shape_of(&g, "features.18.2"), vec![1280, 1, 1]);
    assert_eq!(shape_of(&g, "classifier.1"), vec![7]);
    assert_eq!(
        g.node(g.find("features.0.0").unwrap()).op,
        Op::Conv2d(ConvSpec::new(1, 16, 3, 2, 1))
    );
    // torchvision's mobilenet_v2(width_mult=0.5, num_classes=7) with a 1-channel stem.
    assert_eq!(param_count(&small), 696_359);
}
