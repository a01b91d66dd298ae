# Time lme4::lmer on a benchmark data set (fit only: the data are read before the clock starts).
# Usage: Rscript benchmarks/fit_lme4.R DATA.csv OUT.json FORMULA REML(TRUE/FALSE) LEVELS REPS
#   LEVELS: comma-separated factor levels of `technique` (the first is the reference level)
# Writes JSON: seconds (best of REPS, elapsed), all_seconds, beta, fixed_names, theta, sigma,
# objective, peak_mb (gc "max used", Ncells + Vcells, during the fits), lme4 version.
suppressPackageStartupMessages({library(lme4); library(jsonlite); library(data.table)})
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]; out <- args[2]; form <- as.formula(args[3]); reml <- as.logical(args[4])
levels <- strsplit(args[5], ",", fixed = TRUE)[[1]]; reps <- as.integer(args[6])
d <- as.data.frame(fread(path))
d$technique <- factor(d$technique, levels = levels)
d$patient_id <- factor(d$patient_id)
if ("therapist_id" %in% names(d)) d$therapist_id <- factor(d$therapist_id)
invisible(gc(reset = TRUE))
times <- numeric(reps)
for (r in seq_len(reps)) {
  times[r] <- system.time(fit <- lmer(form, data = d, REML = reml))[["elapsed"]]
}
g <- gc()
peak_mb <- sum(g[, ncol(g)])  # the last column is "max used" in Mb
res <- list(seconds = min(times), all_seconds = times, beta = unname(fixef(fit)),
            fixed_names = names(fixef(fit)), theta = unname(getME(fit, "theta")),
            sigma = sigma(fit), objective = if (reml) REMLcrit(fit) else deviance(fit),
            peak_mb = peak_mb, singular = isSingular(fit),
            lme4_version = as.character(packageVersion("lme4")), nobs = nobs(fit))
write_json(res, out, digits = NA, auto_unbox = TRUE)
