# lme4's safety checks on lme4's own kind of examples: the error/warning sentences it gives,
# recorded for tests/test_checks.py (which asserts our sentences contain lme4's wording).
#
#   Rscript tests/reference/make_reference_checks.R    # run from the repository root
#
# Writes tests/reference/data/checks_*.csv (the inputs) and tests/reference/lme4_checks.json.
suppressPackageStartupMessages({
  library(lme4)
  library(performance)
  library(jsonlite)
})
dir <- "tests/reference"
dat <- file.path(dir, "data")
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10))

# the first error, and all warnings and messages of a call, as text
outcome <- function(expr) {
  warns <- character(0)
  res <- withCallingHandlers(
    tryCatch({ force(expr); NULL }, error = function(e) conditionMessage(e)),
    warning = function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { warns <<- c(warns, trimws(conditionMessage(m)))
                            invokeRestart("muffleMessage") })
  list(error = if (is.null(res)) NA else res, warnings = warns)
}

# 1. single-session pre/post: 24 patients, one pre and one post reading each (check.nobs.vs.nRE)
set.seed(2026)
n <- 24
b0 <- rnorm(n, 0, 1.5)
pre <- 6 + b0 + rnorm(n, 0, 1)
post <- pre - 1.5 + rnorm(n, 0, 1.2)
prepost <- data.frame(patient_id = rep(sprintf("P%02d", 1:n), each = 2), post = rep(0:1, n),
                      value = round(as.vector(rbind(pre, post)), 3))
write.csv(prepost, file.path(dat, "checks_single_session.csv"), row.names = FALSE)
nre <- outcome(lmer(value ~ post + (post | patient_id), prepost, control = ctrl))
m_int <- lmer(value ~ post + (1 | patient_id), prepost, control = ctrl)
cf <- coef(summary(m_int))
tt <- t.test(prepost$value[prepost$post == 1], prepost$value[prepost$post == 0], paired = TRUE)

# 2. one sampled level (check.nlev.gtr.1): sleepstudy, one subject
ss <- lme4::sleepstudy
one <- subset(ss, Subject == "308")
write.csv(one, file.path(dat, "checks_one_subject.csv"), row.names = FALSE)
nlev1 <- outcome(lmer(Reaction ~ Days + (1 | Subject), one, control = ctrl))

# 3. one observation per level (check.nobs.vs.nlev): a random intercept per row
ss$obs <- factor(seq_len(nrow(ss)))
write.csv(ss, file.path(dat, "checks_per_row.csv"), row.names = FALSE)
nlev_obs <- outcome(lmer(Reaction ~ Days + (1 | obs), ss, control = ctrl))

# 4. three subjects (check.nlev.gtreq.5, which lme4 only applies when asked)
three <- subset(lme4::sleepstudy, Subject %in% c("308", "309", "310"))
write.csv(three, file.path(dat, "checks_three_subjects.csv"), row.names = FALSE)
ctrl5 <- ctrl
ctrl5$checkControl$check.nlev.gtreq.5 <- "warning"  # lme4 ignores it by default
nlev5 <- outcome(lmer(Reaction ~ Days + (1 | Subject), three, control = ctrl5))

# 5. stopped early (checkConv): sleepstudy slope model, 10 function evaluations
conv <- outcome(lmer(Reaction ~ Days + (Days | Subject), lme4::sleepstudy,
                     control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 10))))
m_full <- lmer(Reaction ~ Days + (Days | Subject), lme4::sleepstudy, control = ctrl)

# 6. singular: lme4's Dyestuff2 (no between-batch variance)
write.csv(lme4::Dyestuff2, file.path(dat, "checks_dyestuff2.csv"), row.names = FALSE)
singular <- outcome(lmer(Yield ~ 1 + (1 | Batch), lme4::Dyestuff2, control = ctrl))

# 7. factor random slope (0 + f | g) and '||': performance's ICC/R² (random slopes left out)
set.seed(1)
fs <- data.frame(g = factor(rep(1:40, each = 9)), f = factor(rep(c("a", "b", "c"), 120)))
fs$y <- round(rnorm(360) + as.numeric(fs$f) + rnorm(40)[fs$g] +
              rnorm(120)[as.integer(fs$g) * 3 - 3 + as.integer(fs$f)] * 0.8, 4)
write.csv(fs, file.path(dat, "checks_factor_slope.csv"), row.names = FALSE)
m_fs <- lmer(y ~ f + (0 + f | g), fs, control = ctrl)
stopifnot(!isSingular(m_fs))
ic <- performance::icc(m_fs)
r2 <- performance::r2_nakagawa(m_fs)
vv <- insight::get_variance(m_fs)

out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  performance = as.character(packageVersion("performance")),
                  insight = as.character(packageVersion("insight"))),
  nobs_vs_nRE = list(data = "checks_single_session.csv",
                     formula = "value ~ post + (post | patient_id)", error = nre$error,
                     intercept_formula = "value ~ post + (1 | patient_id)",
                     post_estimate = cf["post", "Estimate"], post_se = cf["post", "Std. Error"],
                     reml_criterion = REMLcrit(m_int),
                     paired_t = unname(tt$statistic), paired_df = unname(tt$parameter),
                     paired_se = unname(tt$stderr)),
  nlev_gtr_1 = list(data = "checks_one_subject.csv",
                    formula = "Reaction ~ Days + (1 | Subject)", error = nlev1$error),
  nobs_vs_nlev = list(data = "checks_per_row.csv", formula = "Reaction ~ Days + (1 | obs)",
                      error = nlev_obs$error),
  nlev_gtr_5 = list(data = "checks_three_subjects.csv",
                    formula = "Reaction ~ Days + (1 | Subject)", warnings = nlev5$warnings,
                    error = nlev5$error),
  conv = list(data = "sleepstudy.csv", formula = "Reaction ~ Days + (Days | Subject)",
              maxfun = 10, warnings = conv$warnings, reml_criterion = REMLcrit(m_full)),
  singular = list(data = "checks_dyestuff2.csv", formula = "Yield ~ 1 + (1 | Batch)",
                  warnings = singular$warnings, error = singular$error),
  factor_slope = list(data = "checks_factor_slope.csv", formula = "y ~ f + (0 + f | g)",
                      reml_criterion = REMLcrit(m_fs),
                      icc_adjusted = ic$ICC_adjusted, icc_unadjusted = ic$ICC_unadjusted,
                      r2_marginal = unname(r2$R2_marginal),
                      r2_conditional = unname(r2$R2_conditional),
                      var_fixed = vv$var.fixed, var_random = vv$var.random,
                      var_residual = vv$var.residual)
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE, na = "null"),
           file.path(dir, "lme4_checks.json"))
