# Time lme4 refits of simulated responses, the way simr does it (refit() in a loop), and the same
# refits with lmerTest's Satterthwaite t test of one coefficient.
# Usage: Rscript benchmarks/power_lme4.R DATA.csv RESPONSES.csv OUT.json FORMULA TERM N_LMERTEST
# RESPONSES.csv: one column per simulated study, rows aligned with DATA.csv.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite)
  library(data.table)})
args <- commandArgs(trailingOnly = TRUE)
d <- as.data.frame(fread(args[1])); ys <- as.matrix(fread(args[2], header = TRUE)); out <- args[3]
form <- as.formula(args[4]); term <- args[5]; n_lt <- as.integer(args[6])
d$patient_id <- factor(d$patient_id)
fit <- lme4::lmer(form, data = d, REML = TRUE)
n <- ncol(ys)
est <- numeric(n); crit <- numeric(n)
t_refit <- system.time(for (i in seq_len(n)) {
  f <- refit(fit, newresp = ys[, i])
  est[i] <- fixef(f)[[term]]
  crit[i] <- REMLcrit(f)
})[["elapsed"]]
# with lmerTest's Satterthwaite df (what the Python loop computes for every study)
p_lt <- numeric(n_lt)
t_lt <- system.time(for (i in seq_len(n_lt)) {
  f <- lmerTest::as_lmerModLmerTest(refit(fit, newresp = ys[, i]))
  p_lt[i] <- summary(f)$coefficients[term, "Pr(>|t|)"]
})[["elapsed"]]
write_json(list(n = n, refit_seconds = t_refit, estimates = est, reml_criterion = crit,
                n_lmertest = n_lt,
                lmertest_seconds = t_lt, p_values = p_lt,
                lme4_version = as.character(packageVersion("lme4"))),
           out, digits = NA, auto_unbox = TRUE)
