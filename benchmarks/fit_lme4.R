# Time lme4::lmer on a benchmark data set (fit only: the data are read before the clock starts),
# then lmerTest's fit + Satterthwaite table, and optionally pbkrtest's Kenward-Roger table.
# Usage: Rscript benchmarks/fit_lme4.R DATA.csv OUT.json FORMULA REML(TRUE/FALSE) LEVELS REPS
#        [LMERTEST(TRUE/FALSE)] [KR(TRUE/FALSE)]
#   LEVELS: comma-separated factor levels of `technique` (the first is the reference level)
# Writes JSON: seconds (lme4 fit, best of REPS, elapsed), all_seconds, beta, fixed_names, theta,
# sigma, objective, peak_mb (gc "max used", Ncells + Vcells, during the fits), lme4 version;
# lmertest_seconds (lmerTest::lmer + summary()'s Satterthwaite table, best of REPS), df; kr_seconds
# (lmerTest fit + summary(ddf = "Kenward-Roger"), once), kr_df, kr_se.
suppressPackageStartupMessages({library(lme4); library(jsonlite); library(data.table)})
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]; out <- args[2]; form <- as.formula(args[3]); reml <- as.logical(args[4])
levels <- strsplit(args[5], ",", fixed = TRUE)[[1]]; reps <- as.integer(args[6])
do_lt <- length(args) >= 7 && as.logical(args[7])
do_kr <- length(args) >= 8 && as.logical(args[8])
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
if (do_lt) {
  suppressPackageStartupMessages(library(lmerTest))
  lt <- numeric(reps)
  for (r in seq_len(reps)) {
    lt[r] <- system.time({
      f2 <- lmerTest::lmer(form, data = d, REML = reml)
      tab <- summary(f2)$coefficients
    })[["elapsed"]]
  }
  res$lmertest_seconds <- min(lt)
  res$df <- unname(tab[, "df"])
}
if (do_kr) {
  suppressPackageStartupMessages({library(lmerTest); library(pbkrtest)})
  res$kr_seconds <- system.time({
    f3 <- lmerTest::lmer(form, data = d, REML = TRUE)
    tab <- summary(f3, ddf = "Kenward-Roger")$coefficients
  })[["elapsed"]]
  res$kr_df <- unname(tab[, "df"]); res$kr_se <- unname(tab[, "Std. Error"])
}
write_json(res, out, digits = NA, auto_unbox = TRUE)
