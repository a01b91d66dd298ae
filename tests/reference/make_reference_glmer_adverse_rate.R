# Reference fixture for the report's safety model: adverse events per treatment session as a rate,
# a Poisson GLMM with an offset, for tests/test_report_glmm.py.
#
#   Rscript tests/reference/make_reference_glmer_adverse_rate.R     # from the repository root
#
# Reads tests/reference/data/glmer_adverse.csv (one row a treatment session of data/synthetic,
# event = any adverse event; written by make_reference_glmer.R), counts events and sessions per
# patient and technique, as mfr_outcomes.fit_adverse_events(study, family = "poisson") does, and
# fits glmer(events ~ technique + offset(log(sessions)) + (1 | patient_id), poisson) with a tight
# optimiser. Writes tests/reference/glmer_adverse_rate.json. Tests never call R.
suppressPackageStartupMessages({
  library(lme4)
  library(emmeans)
  library(jsonlite)
})

dir <- "tests/reference"
tight <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)
ae <- read.csv(file.path(dir, "data", "glmer_adverse.csv"), stringsAsFactors = FALSE)
ae$technique <- droplevels(factor(ae$technique,
                                  levels = c("direct_pressure", "stretching", "massage", "combined")))
agg <- aggregate(cbind(events = event, sessions = 1) ~ patient_id + technique, data = ae, FUN = sum)
m <- glmer(events ~ technique + offset(log(sessions)) + (1 | patient_id), agg, poisson,
           control = tight)
cf <- summary(m)$coefficients
vc <- as.data.frame(VarCorr(m))
emm <- as.data.frame(summary(emmeans(m, ~ technique, type = "response", offset = 0),
                             infer = TRUE))
out <- list(
  case = "adverse_rate",
  formula = paste(deparse(formula(m), width.cutoff = 500), collapse = ""),
  control = "glmerControl(optimizer = 'bobyqa', optCtrl = list(rhoend = 1e-10), tolPwrss = 1e-12)",
  lme4_version = as.character(packageVersion("lme4")),
  nobs = nobs(m),
  sessions = sum(agg$sessions),
  events = sum(agg$events),
  fixef = data.frame(term = rownames(cf), estimate = cf[, 1], std_error = cf[, 2],
                     statistic = cf[, 3], p_value = cf[, 4], row.names = NULL),
  varcorr = data.frame(grp = vc$grp, vcov = vc$vcov, sdcor = vc$sdcor),
  minus2loglik = -2 * as.numeric(logLik(m)),
  is_singular = isSingular(m, tol = 1e-4),
  emmeans_response = data.frame(technique = as.character(emm$technique), rate = emm$rate,
                                se = emm$SE, lcl = emm$asymp.LCL, ucl = emm$asymp.UCL)
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(dir, "glmer_adverse_rate.json"))
