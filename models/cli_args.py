"""Arguments of the training subcommands (kept free of heavy imports so --help is fast)."""


def add(name, p):
    if name in ("train", "sweep"):
        p.add_argument("--dataset", "-d", required=True, help="dataset .npz from `tc-daemon dataset build`")
        p.add_argument("--out", default="runs", help="results folder (one subfolder per cell)")
        p.add_argument("--epochs", type=int, default=30, help="maximum epochs (early stopping on validation)")
        p.add_argument("--patience", type=int, default=5)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--include-other", action="store_true", help="train `other` as a class")
        p.add_argument("--balance", help="cap each class at N packets, or 'min' (the paper balanced)")
        p.add_argument("--quiet", "-q", action="store_true")
    if name == "train":
        p.add_argument("--family", choices=["svm", "mlp", "lstm", "cnn", "cnnlstm"], required=True)
        p.add_argument("--budget", type=int, default=100_000, help="parameter budget")
        p.add_argument("--lr", type=float, help="learning rate (default: search the paper's grid)")
        p.add_argument("--split", choices=["random", "flow", "capture"], default="random")
        p.add_argument("--reverse", action="store_true",
                       help="LSTM reads the 40 steps last to first (survives int8 export; see models/zoo.py)")
    if name == "sweep":
        p.add_argument("--families", default="svm,mlp,lstm")
        p.add_argument("--budgets", help="comma list (default: the paper's 15)")
        p.add_argument("--splits", default="random,flow,capture")
        p.add_argument("--report", default="docs/paper-reproduction", help="report folder (md + png)")
    if name == "crossval":
        p.add_argument("--dataset", "-d", required=True, help="dataset .npz from `tc-daemon dataset build`")
        p.add_argument("--out", default="runs/cv", help="results folder (one subfolder per variant)")
        p.add_argument("--name", help="variant name (default: from family, budget and options)")
        p.add_argument("--family", choices=["svm", "mlp", "lstm", "cnn", "cnnlstm", "flowmlp", "flowbytes"],
                       required=True)
        p.add_argument("--budget", type=int, default=100_000, help="parameter budget")
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--folds", type=int, default=5)
        p.add_argument("--seeds", default="0", help="comma list: each seed deals the folds anew")
        p.add_argument("--epochs", type=int, default=30)
        p.add_argument("--patience", type=int, default=5)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--reverse", action="store_true", help="LSTM reads the 40 steps last to first")
        p.add_argument("--include-other", action="store_true", help="train `other` as a class")
        p.add_argument("--no-class-weight", action="store_true", help="no balanced class weights")
        p.add_argument("--augment", action="store_true", help="also train on copies shifted by TCP options")
        p.add_argument("--no-tflite", action="store_true", help="skip the int8 export figures of fold 0")
    if name == "export":
        p.add_argument("runs", nargs="+", help="trained cell folders (with model.keras)")
        p.add_argument("--dataset", "-d", required=True, help="the dataset they were trained on")
        p.add_argument("--ship", default=None, help="models folder to ship into (default: models/shipped)")
        p.add_argument("--quant", default="int8", help="comma list of float32,dynamic,int8")
        p.add_argument("--fallback", help="quantisation to ship when none of --quant passes the parity check")
        p.add_argument("--replace", help="comma list of shipped model names to take out once these ship")
    if name == "report":
        p.add_argument("--runs", default="runs")
        p.add_argument("--cv", help="cross-validation runs (`tc-daemon crossval`): the unseen-traffic report")
        p.add_argument("--dataset", "-d", help="with --cv: the dataset (default: the one the runs recorded)")
        p.add_argument("--no-speed", action="store_true",
                       help="no speed measurements (cells measured before keep theirs): accuracy tables only")
        p.add_argument("--out", default="docs/paper-reproduction")
