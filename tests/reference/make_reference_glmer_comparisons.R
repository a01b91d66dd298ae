# Reference fixture for the report's "Therapists and sites" section on a yes/no measure
# (paresthesia of data/synthetic), for tests/test_report_comparisons.py.
#
#   Rscript tests/reference/make_reference_glmer_comparisons.R     # from the repository root
#
# Builds, from data/synthetic alone (no package code):
# - the model frame: pre-session paresthesia readings on treatment visits, with each visit's
#   therapist and each patient's site; glmer(value ~ 1 + (1 | patient_id) + (1 | therapist_id)
#   [+ (1 | site_id)], binomial) with a tight optimiser; therapist and site conditional modes
#   and conditional SDs (ranef(condVar = TRUE));
# - the funnel: each patient's latest pre-session reading (any visit), the patient's main
#   therapist (most sessions; ties: the first in sorted order) and site; per unit the patients
#   and those with the condition present, and Spiegelhalter's exact binomial limits
#   (Stat Med 2005;24:1185-1202, appendix A.1.1) written out here with qbinom/pbinom.
# Writes tests/reference/glmer_comparisons.json. Tests never call R. The therapist variance is
# near zero (a flat likelihood), so reruns move glmer's estimates by about 1e-7: the tests compare
# to 1e-4 (intercept, deviance) and 2e-5 (conditional modes and SDs).
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

dir <- "tests/reference"
tight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)
pat <- read.csv("data/synthetic/patients.csv", stringsAsFactors = FALSE)
ses <- read.csv("data/synthetic/sessions.csv", stringsAsFactors = FALSE)
mea <- read.csv("data/synthetic/measurements.csv", stringsAsFactors = FALSE)
par <- mea[mea$measure == "paresthesia" & mea$phase == "pre", c("session_id", "value")]
par <- merge(par, ses[, c("session_id", "patient_id", "therapist_id", "session_number",
                          "technique")], by = "session_id")
par <- merge(par, pat[, c("patient_id", "site_id")], by = "patient_id")

fit_case <- function(formula) {
  d <- par[par$technique != "none", ]
  m <- glmer(formula, d, binomial, control = tight)
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  re <- re[re$grpvar != "patient_id", ]
  list(formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
       nobs = nobs(m), ngroups = as.list(ngrps(m)),
       intercept = unname(fixef(m)[1]),
       intercept_se = unname(sqrt(diag(as.matrix(vcov(m))))[1]),
       varcorr = data.frame(grp = vc$grp, vcov = vc$vcov, sdcor = vc$sdcor),
       minus2loglik = -2 * as.numeric(logLik(m)),
       is_singular = isSingular(m, tol = 1e-4),
       ranef = data.frame(grpvar = re$grpvar, level = as.character(re$grp),
                          estimate = re$condval, cond_sd = re$condsd, row.names = NULL))
}

# Spiegelhalter's interpolated exact binomial limit of a proportion out of n around theta
limit <- function(n, theta, p) {
  r <- qbinom(p, n, theta)
  fr <- pbinom(r, n, theta)
  fr1 <- pbinom(r - 1, n, theta)
  alpha <- ifelse(fr > fr1, (fr - p) / (fr - fr1), 0)
  pmin(pmax((r - alpha) / n, 0), 1)
}

# main therapist: most sessions, ties broken by the first therapist in sorted order
cnt <- aggregate(n ~ patient_id + therapist_id, data = transform(ses, n = 1), FUN = sum)
cnt <- cnt[order(cnt$patient_id, -cnt$n, cnt$therapist_id), ]
main <- cnt[!duplicated(cnt$patient_id), c("patient_id", "therapist_id")]
last <- par[order(par$patient_id, -par$session_number), ]
last <- last[!duplicated(last$patient_id), c("patient_id", "value")]
last <- merge(merge(last, main, by = "patient_id"), pat[, c("patient_id", "site_id")],
              by = "patient_id")

funnel <- function(unit) {
  g <- aggregate(cbind(present = value, patients = 1) ~ unit,
                 data = data.frame(value = last$value, unit = last[[unit]]), FUN = sum)
  theta <- sum(g$present) / sum(g$patients)
  data.frame(unit = g$unit, patients = g$patients, present = g$present,
             lo95 = limit(g$patients, theta, 0.025), hi95 = limit(g$patients, theta, 0.975),
             lo998 = limit(g$patients, theta, 0.001), hi998 = limit(g$patients, theta, 0.999))
}

out <- list(
  control = "glmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)",
  lme4_version = as.character(packageVersion("lme4")),
  therapist = fit_case(value ~ 1 + (1 | patient_id) + (1 | therapist_id)),
  therapist_site = fit_case(value ~ 1 + (1 | patient_id) + (1 | therapist_id) + (1 | site_id)),
  funnel_therapist = funnel("therapist_id"),
  funnel_site = funnel("site_id")
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(dir, "glmer_comparisons.json"))
cat("wrote glmer_comparisons.json\n")
