# Reference fixtures from lme4 / lmerTest for tests/test_reference_crossed.py: crossed, partially
# crossed and three-level nested random effects, a factor random slope, a singular crossed fit.
#
#   Rscript tests/reference/make_reference_crossed.R   # from the repository root
#
# The data are simulated here with R's seeded RNG and written to tests/reference/data/crossed_*.csv;
# the fits to tests/reference/crossed_<case>.json. Tests never call R.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

dir <- "tests/reference"
dat <- file.path(dir, "data")
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5))

# A clinic: each patient has a home therapist; a session is given by another therapist with
# probability `switch` (patients listed in `switchers` only, when given). Pre and post readings.
sim_clinic <- function(n_pat, n_ther, n_sess, switch, switchers = NULL, slope_sd = 0,
                       ther_sd = 0.6) {
  home <- sample.int(n_ther, n_pat, replace = TRUE)
  b0 <- rnorm(n_pat, 0, 1.0)
  b1 <- rnorm(n_pat, 0, slope_sd)
  bt <- rnorm(n_ther, 0, ther_sd)
  rows <- list()
  for (i in seq_len(n_pat)) {
    can_switch <- is.null(switchers) || i %in% switchers
    for (s in seq_len(n_sess)) {
      th <- home[i]
      if (can_switch && runif(1) < switch) th <- sample(setdiff(seq_len(n_ther), home[i]), 1)
      for (post in 0:1) {
        mu <- 6 + b0[i] + bt[th] + (-1.5 + b1[i]) * post - 0.1 * s
        rows[[length(rows) + 1]] <- data.frame(
          patient_id = sprintf("P%03d", i), therapist_id = sprintf("T%02d", th),
          session_number = s, post = post, value = mu + rnorm(1, 0, 0.8))
      }
    }
  }
  do.call(rbind, rows)
}

fixture <- function(case, m, data_file, notes = "") {
  cf <- summary(m)$coefficients            # lmerTest: Satterthwaite df and p
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  re <- do.call(rbind, lapply(split(re, re$grpvar), function(d) {
    lv <- head(unique(as.character(d$grp)), 3)
    d[as.character(d$grp) %in% lv, ]
  }))
  list(
    case = case,
    data = data_file,
    formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
    reml = isREML(m),
    notes = notes,
    optimizer = "bobyqa, rhoend = 1e-10",
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    fixef = data.frame(term = rownames(cf), estimate = cf[, "Estimate"],
                       std_error = cf[, "Std. Error"], df = cf[, "df"],
                       statistic = cf[, "t value"], p_value = cf[, "Pr(>|t|)"],
                       row.names = NULL),
    varcorr = data.frame(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov,
                         sdcor = vc$sdcor),
    sigma = sigma(m),
    theta = unname(getME(m, "theta")),
    theta_names = names(getME(m, "theta")),
    loglik = as.numeric(logLik(m)),
    reml_criterion = if (isREML(m)) REMLcrit(m) else NA,
    deviance = if (isREML(m)) NA else deviance(m),
    aic = AIC(m),
    bic = BIC(m),
    is_singular = isSingular(m, tol = 1e-4),
    ranef = data.frame(grpvar = re$grpvar, term = re$term, level = as.character(re$grp),
                       estimate = re$condval, cond_sd = re$condsd, row.names = NULL)
  )
}

write_fixture <- function(x, case) {
  writeLines(toJSON(x, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE),
             file.path(dir, paste0("crossed_", case, ".json")))
}

run_case <- function(case, formula, data, reml = TRUE, notes = "") {
  file <- paste0("crossed_", case, ".csv")
  write.csv(data, file.path(dat, file), row.names = FALSE)
  d <- read.csv(file.path(dat, file), stringsAsFactors = FALSE)  # exactly what the tests read
  m <- lmer(as.formula(formula), d, REML = reml, control = ctrl)
  write_fixture(fixture(case, m, file, notes), case)
  invisible(m)
}

# 1. two crossed random intercepts: patients and therapists, half the sessions with another one
set.seed(101)
run_case("intercepts", "value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)",
         sim_clinic(60, 8, 5, switch = 0.5))

# 2. crossed, with a correlated random slope of post on patients
set.seed(102)
run_case("slope", "value ~ post + session_number + (post | patient_id) + (1 | therapist_id)",
         sim_clinic(70, 10, 6, switch = 0.3, slope_sd = 0.5))

# 3. three-level nesting: patients in therapists in sites
set.seed(103)
nest <- do.call(rbind, lapply(1:4, function(s) {
  bs <- rnorm(1, 0, 0.7)
  do.call(rbind, lapply(1:3, function(t) {
    bt <- rnorm(1, 0, 0.5)
    do.call(rbind, lapply(1:5, function(p) {
      bp <- rnorm(1, 0, 0.9)
      do.call(rbind, lapply(1:4, function(k) {
        data.frame(site_id = sprintf("S%d", s), therapist_id = sprintf("T%d", t),
                   patient_id = sprintf("P%d", p), session_number = k, post = 0:1,
                   value = 6 + bs + bt + bp - 1.2 * (0:1) - 0.1 * k + rnorm(2, 0, 0.8))
      }))
    }))
  }))
}))
run_case("nested3", "value ~ post + (1 | site_id/therapist_id/patient_id)", nest,
         notes = "therapist and patient labels repeat across sites/therapists: nesting by '/'")

# 4. partially crossed: most patients see one therapist, a fifth of them a second one; ML
set.seed(104)
run_case("partial_ml", "value ~ post + session_number + (1 | patient_id) + (1 | therapist_id)",
         sim_clinic(80, 8, 5, switch = 0.4, switchers = sample.int(80, 16)), reml = FALSE)

# 5. a factor random slope (0 + f | g), crossed with an intercept on h
set.seed(105)
fs <- expand.grid(g = sprintf("g%02d", 1:24), f = c("a", "b", "c"), rep = 1:4,
                  stringsAsFactors = FALSE)
fs$h <- sprintf("h%d", sample.int(6, nrow(fs), replace = TRUE))
S <- matrix(c(1.0, 0.5, 0.3, 0.5, 0.8, 0.2, 0.3, 0.2, 0.6), 3)
bg <- MASS::mvrnorm(24, c(0, 0, 0), S)
bh <- rnorm(6, 0, 0.5)
fi <- match(fs$f, c("a", "b", "c"))
fs$y <- c(2, 2.5, 1.5)[fi] + bg[cbind(match(fs$g, sprintf("g%02d", 1:24)), fi)] +
  bh[match(fs$h, sprintf("h%d", 1:6))] + rnorm(nrow(fs), 0, 0.7)
fs$rep <- NULL
run_case("factor_slope", "y ~ f + (0 + f | g) + (1 | h)", fs)

# 6. singular crossed fit: the second factor has no variance at all
set.seed(106)
sg <- data.frame(a = sprintf("a%02d", rep(1:30, each = 6)),
                 b = sprintf("b%d", sample.int(6, 180, replace = TRUE)), x = rnorm(180))
sg$y <- 1 + 0.5 * sg$x + rnorm(30, 0, 0.8)[match(sg$a, sprintf("a%02d", 1:30))] +
  rnorm(180, 0, 1)
m6 <- run_case("singular", "y ~ x + (1 | a) + (1 | b)", sg)
if (!isSingular(m6)) stop("case 'singular' is not singular: change its seed")
