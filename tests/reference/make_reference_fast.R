# Fixtures for tests/test_fast.py: lme4 fits (tight optimiser tolerances) and lme4's own deviance
# function at fixed theta, so that the engine's algebra is checked independently of any optimiser.
# Run from the repository root:  Rscript tests/reference/make_reference_fast.R
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)})
out_dir <- "tests/reference"
tight <- lmerControl(optimizer = "nloptwrap",
                     optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, xtol_rel = 0, ftol_rel = 0,
                                    maxeval = 1e5),
                     check.conv.singular = "ignore", check.conv.hess = "ignore",
                     check.conv.grad = "ignore")

one <- function(name, formula, data, reml, probes) {
  fit <- lmer(formula, data = data, REML = reml, control = tight)
  re <- ranef(fit, condVar = TRUE)
  blocks <- lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    # one array per term when the terms are uncorrelated blocks (||): keep the diagonal
    if (is.list(pv)) {
      cv <- lapply(seq_len(nrow(re[[g]])), function(i) diag(sapply(pv, function(a) a[1, 1, i]),
                                                            nrow = length(pv)))
    } else {
      cv <- lapply(seq_len(dim(pv)[3]), function(i) matrix(pv[, , i], nrow = dim(pv)[1]))
    }
    list(group = g, terms = colnames(re[[g]]), levels = rownames(re[[g]]),
         modes = unname(as.matrix(re[[g]])), condvar = lapply(cv, unname))
  })
  cf <- summary(fit)$coefficients
  theta_hat <- unname(getME(fit, "theta")); beta_hat <- unname(fixef(fit)); sigma_hat <- sigma(fit)
  obj <- if (reml) unname(REMLcrit(fit)) else unname(deviance(fit))
  sing <- isSingular(fit)
  vc <- unname(as.matrix(vcov(fit)))
  # probes last: lme4's devfun shares (and changes) the fitted model's state
  devf <- getME(fit, "devfun")  # profiled deviance of this fit (REML or ML)
  vp <- c(theta_hat, sigma_hat)
  devfun_probe <- lapply(probes, function(th) list(theta = th, value = devf(th)))
  devf(theta_hat)
  # lmerTest's deviance at varpar (theta, sigma), not profiled in sigma
  vp_probe <- list(varpar = vp * 1.1, value = lmerTest:::devfun_vp(vp * 1.1, devf, reml),
                   covbeta = unname(lmerTest:::get_covbeta(vp * 1.1, devf)))
  devf(theta_hat)
  list(name = name, formula = paste(deparse(formula), collapse = " "), reml = reml,
       theta = theta_hat, beta = beta_hat,
       fixed_names = names(fixef(fit)), sigma = sigma_hat, objective = obj, vcov = vc,
       df_satterthwaite = unname(cf[, "df"]),
       singular = sing, ranef = blocks, devfun = devfun_probe, varpar = vp_probe,
       lme4_version = as.character(packageVersion("lme4")))
}

write_case <- function(case, data, file) {
  case$data <- data
  write_json(case, file.path(out_dir, file), digits = NA, auto_unbox = TRUE, matrix = "rowmajor")
}

data(sleepstudy, package = "lme4")
ss <- sleepstudy
ss$Subject <- as.character(ss$Subject)
write_case(one("sleepstudy_slope_reml", Reaction ~ Days + (Days | Subject), ss, TRUE,
               list(c(1, 0, 1), c(0.5, 0.2, 0.1), c(0.9, -0.3, 0))), ss,
           "fast_sleepstudy_slope_reml.json")
write_case(one("sleepstudy_slope_ml", Reaction ~ Days + (Days | Subject), ss, FALSE,
               list(c(1, 0, 1), c(0.5, 0.2, 0.1))), ss, "fast_sleepstudy_slope_ml.json")
write_case(one("sleepstudy_intercept_ml", Reaction ~ Days + (1 | Subject), ss, FALSE,
               list(1, 0.3, 0)), ss, "fast_sleepstudy_intercept_ml.json")
write_case(one("sleepstudy_uncorrelated_reml", Reaction ~ Days + (Days || Subject), ss, TRUE,
               list(c(1, 1), c(0.5, 0))), ss, "fast_sleepstudy_uncorrelated_reml.json")

# nested: patients within therapists, random pre/post slope per patient, intercept per therapist
set.seed(11)
n_ther <- 8; n_pat <- 48; n_sess <- 4
pat <- data.frame(patient_id = sprintf("p%02d", 1:n_pat),
                  therapist_id = sprintf("t%d", rep(1:n_ther, length.out = n_pat)),
                  technique = sample(c("direct_pressure", "stretching", "massage"), n_pat, TRUE))
ther_eff <- setNames(rnorm(n_ther, 0, 0.8), sprintf("t%d", 1:n_ther))
pat$b0 <- rnorm(n_pat, 0, 1.2); pat$b1 <- rnorm(n_pat, 0, 0.6)
d <- merge(pat, expand.grid(patient_id = pat$patient_id, session_number = 1:n_sess,
                            post = 0:1, stringsAsFactors = FALSE))
d <- d[order(d$patient_id, d$session_number, d$post), ]
d$value <- 6 + ther_eff[d$therapist_id] + d$b0 - 0.2 * d$session_number +
  (-1.5 + d$b1 + ifelse(d$technique == "massage", 0.4, 0)) * d$post + rnorm(nrow(d), 0, 0.9)
d <- d[, c("patient_id", "therapist_id", "technique", "session_number", "post", "value")]
rownames(d) <- NULL
f_nest <- value ~ post * technique + session_number + (post | patient_id) + (1 | therapist_id)
write_case(one("nested_reml", f_nest, d, TRUE,
               list(c(1, 0, 1, 1), c(0.8, -0.1, 0.4, 0.5), c(1, 0, 0, 0))), d,
           "fast_nested_reml.json")
write_case(one("nested_ml", f_nest, d, FALSE, list(c(1, 0, 1, 1))), d, "fast_nested_ml.json")

# singular: no true between-group variation, the optimum is theta = 0
set.seed(1)
s <- data.frame(g = sprintf("g%02d", rep(1:10, each = 5)), x = rnorm(50))
s$y <- 1 + 0.5 * s$x + rnorm(50)
write_case(one("singular_reml", y ~ x + (1 | g), s, TRUE, list(1, 0.1, 0)), s,
           "fast_singular_reml.json")
cat("fixtures written\n")
