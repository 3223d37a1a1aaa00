"""The parameter and attribute documentation the two estimators share."""

PARAMETERS = """\
    hidden_layer_sizes : int or tuple of int, default (256, 256)
        Sizes of the hidden layers; ``()`` is a network of one sparse layer (no hidden
        layers), as in scikit-learn.
    activation : {"relu", "allrelu", "leaky_relu", "linear", "tanh", "sigmoid"}, default "relu"
        Hidden-layer activation.  All-ReLU (the paper's, best on Fashion-MNIST) alternates
        slopes ``-slope``, ``+slope``, ... for negative inputs from one hidden layer to the
        next; ReLU was better on tabular data (``benchmarks/results/tabular.md``).
    slope : float, default 0.6
        All-ReLU slope magnitude (sparsekit's ``TrainConfig.alpha``; here ``alpha`` is
        scikit-learn's L2 penalty).
    epsilon : float, default 10.0
        Erdős–Rényi density: a layer gets ``min(n_in * n_out, epsilon * (n_in + n_out))``
        connections.  (scikit-learn's Adam ``epsilon`` is ``adam_epsilon`` here.)
    dropout : float, default 0.1
        Dropout rate on hidden activations during training.
    method : str, default "gse"
        Topology evolution (see :func:`sparsekit.available_methods`): ``"gse"`` grows the
        absent connections with the largest gradient among a random sample of them (new weights
        0) and prunes the smallest, once per epoch until 75 % of ``max_iter``; ``"set"`` (the
        paper's) regrows at random positions; ``"static"`` keeps the initial topology.  GSE
        finds the informative inputs among many noise ones (``benchmarks/results/tabular.md``:
        0.85 against SET's 0.78 on 1 000 features of which 20 informative and 80 redundant).
    zeta : float, default 0.3
        SET's fraction of each sign's weights replaced per epoch (GSE's fraction is
        ``method_params={"drop_fraction": ...}``).
    method_params : dict, optional
        Extra keyword arguments for the growth method.
    solver : {"adam", "sgd", "adamw"}, default "adam"
        ``"sgd"``: momentum SGD (``momentum``, ``nesterovs_momentum``); ``"adam"``: Adam with
        the L2 penalty in the gradient, as scikit-learn's; ``"adamw"``: Adam with the penalty as
        a decoupled shrink.  (scikit-learn's ``"lbfgs"`` is not offered.)
    alpha : float, default 1e-4
        L2 penalty, scaled as scikit-learn scales it: ``alpha * W / batch_size`` is added to the
        gradient of the mean batch loss, i.e. ``TrainConfig.weight_decay = alpha / batch_size``
        (see :mod:`sparsekit.sklearn.base` for the exact mapping).
    batch_size : int or "auto", default "auto"
        Mini-batch size; ``"auto"`` is ``min(200, n_samples)`` and a larger int is clipped to
        ``n_samples`` (with a warning), as in scikit-learn.
    learning_rate_init : float, default 3e-3
        Initial learning rate.
    lr_schedule : {"constant", "step", "cosine", "linear"}, default "constant"
        Learning-rate schedule over ``max_iter`` epochs (scikit-learn's ``learning_rate`` has
        other choices, so it keeps another name).
    warmup_epochs : float, default 0.0
        Linear learning-rate warm-up.
    max_iter : int, default 50
        Maximum number of epochs of ``fit``, and the horizon of the learning-rate and growth
        schedules (``partial_fit``: every ``max_iter`` calls a new horizon starts).  Reaching
        it warns (``ConvergenceWarning``), as in scikit-learn, when
        ``n_iter_no_change < max_iter``, i.e. when the stopping rule could have ended training
        sooner.
    shuffle : bool, default True
        Shuffle the samples every epoch.
    random_state : int, RandomState instance or None, default None
        Seeds the topology, the initial weights, the data order, dropout, regrowth and the
        validation split.
    tol : float, default 1e-4
        Tolerance of the stopping rule (see ``n_iter_no_change``).
    verbose : bool, default False
        Print the loss (and validation score) of every epoch, as scikit-learn does.
    warm_start : bool, default False
        Let ``fit`` continue training the current network instead of starting anew.  Each such
        call trains under the current parameters with a new optimizer (as scikit-learn's MLP
        does), growth method and schedules: a new horizon of ``max_iter`` epochs.  The
        parameters that shaped the network (``hidden_layer_sizes``, ``epsilon``, ``dtype``,
        ``init``, ``fan_in``) cannot change then: a warm fit refuses new values.
    momentum : float, default 0.9
        Momentum of ``solver="sgd"``.
    nesterovs_momentum : bool, default True
        Nesterov's momentum for ``solver="sgd"`` (when ``momentum > 0``).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (stratified for the classifier)
        and stop when its score (accuracy or R²) has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the best epoch's network is kept.  Without it, training
        stops when the training loss has not improved by ``tol`` for ``n_iter_no_change``
        epochs.  Not available in ``partial_fit``.
    validation_fraction : float, default 0.1
        Share of the training data held out for early stopping.
    beta_1, beta_2 : float, default 0.9, 0.999
        Adam's moment decay rates.
    adam_epsilon : float, default 1e-8
        Adam's denominator constant (scikit-learn's ``epsilon``).
    n_iter_no_change : int, default 50
        Epochs without improvement by ``tol`` before stopping (scikit-learn: 10).  SET's
        regrowth makes the training loss jump after each topology update, so scikit-learn's 10
        stopped small data sets after 15-20 epochs, far from converged; the default 50 lets
        ``fit`` run its ``max_iter`` epochs unless you raise ``max_iter``.
    init : {"he_uniform", "xavier_uniform", "normal"}, default "he_uniform"
        Distribution of initial and regrown weights.
    fan_in : {"dense", "actual"}, default "dense"
        Fan-in that scales the initial weights; regrown weights use the dense fan-in.
    max_grad_norm : float or None, default None
        Rescale a step's gradients when their global L2 norm exceeds this (None: never).
    standardize : {"auto", True, False}, default "auto"
        ``True``: standardise every feature with the mean and standard deviation of the first
        ``fit``/``partial_fit`` call's data (a ``scipy.sparse`` ``X`` is only divided by the
        standard deviation, so it stays sparse), and apply the same map in ``predict``.  No
        feature is divided by less than 0.3 times the median standard deviation, so nearly
        constant features are not amplified into noise.  ``"auto"``: the same, except that
        when the features share a scale (the 90th percentile of their standard deviations is
        at most 5 times the 10th: pixels, one kind of measurement) every feature is centred and
        divided by the median standard deviation, which keeps their relative spread.
        Unscaled tabular data then trains as well as scaled data; ``False`` leaves the inputs
        as they are, as scikit-learn's MLP does.
    backend : {"cpu", "gpu", "auto"} or Backend, default "cpu"
        Kernel backend.
    dtype : {"float32", "float64"}, default "float32"
        Precision of weights and activations."""

ATTRIBUTES = """\
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Feature names, when ``X`` had string column names.
    model_ : SparseMLP
        The trained network.
    n_iter_ : int
        Epochs run by the last ``fit`` (``partial_fit``: 1), as in scikit-learn.
    t_ : int
        Training samples seen by the solver over every call (scikit-learn's meaning).
    loss_ : float
        Mean training loss of the last epoch.
    loss_curve_ : list of float
        Mean training loss of every epoch (over every ``fit``/``partial_fit`` call); the data
        loss, without scikit-learn's added ``0.5 * alpha * ||W||^2 / n`` penalty term.
    best_loss_ : float or None
        Lowest training loss reached (None with ``early_stopping``).
    validation_scores_ : list of float or None
        Score on the held-out split after every epoch (None without ``early_stopping``).
    best_validation_score_ : float or None
        Best of ``validation_scores_`` (None without ``early_stopping``)."""
